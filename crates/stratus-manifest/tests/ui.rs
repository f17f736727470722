//! Golden tests: every `tests/ui/NAME.toml` is parsed; a valid one must match `NAME.json`, an
//! invalid one `NAME.err`. Run with `BLESS=1` to rewrite the expected files after a deliberate
//! change, then review the diff.

use std::fs;
use std::path::Path;

#[test]
fn ui_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let bless = std::env::var_os("BLESS").is_some();
    let mut seen = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let src = fs::read_to_string(&path).unwrap();
        let (actual, ext) = match stratus_manifest::parse(&format!("{stem}.toml"), &src) {
            Ok(spec) => (serde_json::to_string_pretty(&spec).unwrap() + "\n", "json"),
            Err(e) => (e.to_string() + "\n", "err"),
        };
        let expected_path = dir.join(format!("{stem}.{ext}"));
        if bless {
            let other = dir.join(format!(
                "{stem}.{}",
                if ext == "json" { "err" } else { "json" }
            ));
            let _ = fs::remove_file(other);
            fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!("{stem}: expected\n{expected}\ngot\n{actual}")),
            Err(_) => failures.push(format!("{stem}: no {stem}.{ext}; got\n{actual}")),
        }
    }
    assert!(seen >= 5, "expected golden files in {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}
