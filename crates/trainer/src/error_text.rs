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
        let part = match cause.downcast_ref::<candle_core::Error>() {
            Some(e) => candle_text(e),
            None => cause.to_string(),
        };
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

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` or
/// `RUST_LIB_BACKTRACE` is set (a user asked for a panic's backtrace, not for 18 frames after
/// every error message), its context and path kept on one line.
fn candle_text(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_text(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_text(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), candle_text(inner))
        }
        other => other.to_string(),
    }
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
    fn candles_backtrace_is_left_out() {
        let inner = candle_core::Error::Msg("shape mismatch in matmul".into());
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        }
        .with_path("model.safetensors");
        let text = error_chain_text(&anyhow::Error::new(e).context("evaluating"));
        assert_eq!(
            text,
            "evaluating: model.safetensors: shape mismatch in matmul"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io).context("writing the checkpoint");
        assert_eq!(error_chain_text(&e), "writing the checkpoint: disk on fire");
    }
}
