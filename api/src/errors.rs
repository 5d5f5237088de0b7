//! An error with its causes, on one line: for the agent's logs (a warning
//! that says "reconciling the HTB tree" and not why is of no use to an
//! operator) and the kubectl plugin's status column.

use std::error::Error;

/// `e` and every error under it, joined by ": " (as anyhow's `{:#}`
/// prints), e.g. `reconciling the HTB tree: adding a leaf qdisc to
/// 7662:22: Specified qdisc kind is unknown`.
pub fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // A wrapper that repeats its source's text adds nothing.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reconciling the HTB tree")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_printed_once() {
        let e = Outer(std::io::Error::other("Specified qdisc kind is unknown"));
        assert_eq!(
            chain(&e),
            "reconciling the HTB tree: Specified qdisc kind is unknown"
        );
        let bare = std::io::Error::other("alone");
        assert_eq!(chain(&bare), "alone");
    }
}
