//! Hiding secrets in anything the loader prints: user info in URLs, and key ids or tokens
//! shown only by a few characters. Both work on any text (no byte slicing of characters).

/// Hides the user info of every `scheme://user:password@host` in `text` (an endpoint from the
/// environment, echoed in a log line or an error). Works on any text, ASCII or not.
pub fn userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', '?', '#', ' ', '"']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A key id or token shown by its first `keep` characters and last two (`AKIA…XY`, `hf_…op`),
/// enough to tell which one is in use; short values are hidden entirely.
pub fn secret(value: &str, keep: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 8 {
        return "…".into();
    }
    let head: String = chars[..keep.min(chars.len() - 2)].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_redacted_anywhere_in_text() {
        assert_eq!(
            userinfo("HF_ENDPOINT=\"http://user:pw@hub:8080/x\" bad"),
            "HF_ENDPOINT=\"http://***@hub:8080/x\" bad"
        );
        assert_eq!(userinfo("a https://h/p?u=x@y"), "a https://h/p?u=x@y");
        assert_eq!(
            userinfo("ü://ä:ö@é and s3://k:s@b/c"),
            "ü://***@é and s3://***@b/c"
        );
        assert_eq!(userinfo("no url"), "no url");
        assert_eq!(userinfo("http://p@ss:w@rd@h"), "http://***@h");
    }

    #[test]
    fn secrets_keep_a_few_characters_also_non_ascii() {
        assert_eq!(secret("AKIAIOSFODNN7EXAMPLE", 4), "AKIA…LE");
        assert_eq!(secret("hf_abcdefghijklmnop", 3), "hf_…op");
        assert_eq!(secret("short", 4), "…");
        assert_eq!(secret("ключключключ", 4), "ключ…юч");
        assert_eq!(secret("ééééééééé", 4), "éééé…éé");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn passwords_never_survive_redaction(user in "[a-z]{1,8}", pw in "[A-Za-z0-9]{6,12}", host in "[a-z0-9.]{1,12}", pre in "\\PC{0,10}") {
            let text = format!("{pre} http://{user}:{pw}@{host}/x");
            let out = userinfo(&text);
            let needle = format!(":{pw}@");
            prop_assert!(!out.contains(&needle));
            let _ = userinfo(&pre);
        }

        #[test]
        fn secret_never_panics_and_never_shows_the_middle(s in "\\PC{0,40}") {
            let out = secret(&s, 4);
            prop_assert!(out.chars().count() <= 7, "{}", out);
            if s.chars().count() > 8 {
                prop_assert!(out != s);
            }
        }
    }
}
