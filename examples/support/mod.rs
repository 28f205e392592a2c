//! Reading an example's output in its own tests.
#![allow(dead_code)]

/// The one line of `out` that starts with `prefix` (after leading spaces).
pub(crate) fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    let mut found = out.lines().filter(|l| l.trim_start().starts_with(prefix));
    let first = found
        .next()
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"));
    assert!(
        found.next().is_none(),
        "several lines start with {prefix:?} in:\n{out}"
    );
    first
}

/// The number right before `word` in `line` ("3 calls" → 3).
pub(crate) fn count_before(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    assert!(at > 0, "nothing before {word:?} in {line:?}");
    words[at - 1]
        .parse()
        .unwrap_or_else(|_| panic!("no number before {word:?} in {line:?}"))
}

/// The word right after `word` in `line` ("open 3" → "3").
pub(crate) fn word_after<'a>(line: &'a str, word: &str) -> &'a str {
    let mut words = line.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words
        .next()
        .unwrap_or_else(|| panic!("nothing after {word:?} in {line:?}"))
}
