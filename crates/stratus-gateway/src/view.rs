use std::net::IpAddr;

use http::HeaderMap;
use stratus_router::RequestView;

/// What routing rules may read from an HTTP request.
pub struct HttpView<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub peer: IpAddr,
}

impl RequestView for HttpView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"'))
            })
    }

    /// Raw (not percent-decoded) query values: rules compare what the client sent.
    fn query(&self, name: &str) -> Option<&str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    fn peer(&self) -> IpAddr {
        self.peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_cookies_and_query() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant-id", "t7".parse().unwrap());
        h.insert("cookie", "a=1; beta=\"yes\"".parse().unwrap());
        let v = HttpView {
            headers: &h,
            query: Some("x=1&flag&v=2"),
            peer: "10.0.0.1".parse().unwrap(),
        };
        assert_eq!(v.header("x-tenant-id"), Some("t7"));
        assert_eq!(v.cookie("beta"), Some("yes"));
        assert_eq!(v.cookie("nope"), None);
        assert_eq!(v.query("v"), Some("2"));
        assert_eq!(v.query("flag"), Some(""));
        assert_eq!(v.query("y"), None);
    }
}
