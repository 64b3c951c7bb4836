//! How the command line prints an error: the chain of causes, each said once.
//!
//! Error types of this workspace put their cause's text in their own message
//! (`cannot read config file nope.toml: No such file or directory (os error 2)`) so that they read
//! well on their own, and also expose it as [`std::error::Error::source`] so that programs can
//! inspect it. Printing the whole chain naively (`anyhow`'s `{:#}`) would then repeat the cause;
//! [`error_chain_text`] leaves out every cause whose text is already part of what was printed.

/// The error and its causes joined by `": "`, leaving out a cause whose text the message so far
/// already contains.
///
/// ```
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// let e = anyhow::Error::new(io).context("cannot read config file a.toml: no such file");
/// assert_eq!(
///     recallseg_trainer::error_text::error_chain_text(&e),
///     "cannot read config file a.toml: no such file"
/// );
/// ```
pub fn error_chain_text(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let part = cause.to_string();
        let part = part.trim();
        if part.is_empty() || parts.iter().any(|p| p.contains(part)) {
            continue;
        }
        match parts.last_mut() {
            // A context that the cause repeats at its start ("checkpoint X" then "checkpoint
            // X: No such file"): the cause says it all.
            Some(last) if part.starts_with(last.as_str()) => *last = part.to_string(),
            _ => parts.push(part.to_string()),
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_that_its_cause_repeats_is_said_once() {
        let e = anyhow::anyhow!("checkpoint /x.safetensors: No such file or directory")
            .context("checkpoint /x.safetensors")
            .context("evaluating");
        assert_eq!(
            error_chain_text(&e),
            "evaluating: checkpoint /x.safetensors: No such file or directory"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let err = crate::config::TrainConfig::from_file(
            std::path::Path::new("surely/absent/nope.toml"),
            &[],
        )
        .unwrap_err();
        let text = error_chain_text(&anyhow::Error::new(err));
        assert!(text.starts_with("cannot read config file surely/absent/nope.toml: "));
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io).context("writing the checkpoint");
        assert_eq!(error_chain_text(&e), "writing the checkpoint: disk on fire");
    }
}
