//! A wasi:http function in Rust: the `wasi:http/proxy` world, built with
//! `cargo build --release --target wasm32-wasip2` (`rustup target add wasm32-wasip2`).

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Handler;

wasip2::http::proxy::export!(Handler);

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
        let path = request.path_with_query().unwrap_or_default();
        let body = format!(r#"{{"message":"{greeting} from rust","path":"{path}"}}"#);

        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let response_body = response.body().expect("a fresh response has a body");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = response_body.write().expect("the body has a stream");
        stream.write_all(body.as_bytes()).expect("write");
        stream.flush().expect("flush");
        drop(stream);
        OutgoingBody::finish(response_body, None).expect("finish");
    }
}
