//! Maps byte offsets and key paths of a TOML document to lines, columns and dotted keys, for
//! error messages. Approximate by design (it reads lines, not a syntax tree), which is enough to
//! point a person at the right place.

pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// The table a line belongs to, and the key the line defines, if any.
fn header_of(line: &str) -> Option<String> {
    let t = line.trim();
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.split("]]").next())
        .or_else(|| t.strip_prefix('[').and_then(|r| r.split(']').next()))?;
    Some(inner.trim().to_string())
}

fn key_of(line: &str) -> Option<String> {
    let t = line.trim();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    Some(k.trim().trim_matches('"').to_string())
}

/// The dotted key defined on the line containing `offset`, with its table prefix.
pub fn key_at(src: &str, offset: usize) -> Option<String> {
    let (line_no, _) = line_col(src, offset);
    let lines: Vec<&str> = src.lines().collect();
    let line = lines.get(line_no - 1)?;
    if let Some(h) = header_of(line) {
        return Some(h);
    }
    let key = key_of(line);
    let table = lines[..line_no - 1].iter().rev().find_map(|l| header_of(l));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// Finds where a dotted key (`limits.timeout`, `routes.path`, or `name`) is defined.
/// `triggers[1].cron` is the key in the second `[[triggers]]` table.
pub fn find_key(src: &str, dotted: &str) -> Option<(usize, usize)> {
    let (table, key) = match dotted.rsplit_once('.') {
        Some((t, k)) => (Some(t), k),
        None => (None, dotted),
    };
    let (table, nth) = match table.and_then(|t| t.strip_suffix(']')?.split_once('[')) {
        Some((t, n)) => (Some(t), n.parse::<usize>().ok()),
        None => (table, None),
    };
    let mut current: Option<String> = None;
    let mut seen = 0usize;
    let mut in_nth = nth.is_none();
    let mut table_line = None;
    for (i, line) in src.lines().enumerate() {
        if let Some(h) = header_of(line) {
            current = Some(h);
            if table == current.as_deref() {
                in_nth = nth.is_none_or(|n| n == seen);
                seen += 1;
                if in_nth && table_line.is_none() {
                    table_line = Some(i + 1);
                }
            }
            continue;
        }
        if current.as_deref() == table && in_nth && key_of(line).as_deref() == Some(key) {
            let col = line.len() - line.trim_start().len() + 1;
            return Some((i + 1, col));
        }
    }
    table_line.map(|l| (l, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name = \"a\"\n[limits]\ntimeout = \"1s\"\n[[routes]]\npath = \"/x\"\n";

    #[test]
    fn finds_keys_in_tables() {
        assert_eq!(find_key(DOC, "name"), Some((1, 1)));
        assert_eq!(find_key(DOC, "limits.timeout"), Some((3, 1)));
        assert_eq!(find_key(DOC, "routes.path"), Some((5, 1)));
        let two = "[[t]]\ncron = \"a\"\n[[t]]\ncron = \"b\"\n";
        assert_eq!(find_key(two, "t[0].cron"), Some((2, 1)));
        assert_eq!(find_key(two, "t[1].cron"), Some((4, 1)));
        assert_eq!(
            key_at(DOC, DOC.find("1s").unwrap()),
            Some("limits.timeout".into())
        );
    }
}
