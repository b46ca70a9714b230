//! Structured logs on stderr (journald): JSON by default, text on request.
//! `CERTGATE_LOG` (an `EnvFilter` directive) overrides `log.level`.

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(cfg: &LogConfig) {
    let filter = match std::env::var("CERTGATE_LOG") {
        Ok(directive) if !directive.is_empty() => {
            EnvFilter::try_new(&directive).unwrap_or_else(|e| {
                eprintln!("certgate: ignoring CERTGATE_LOG={directive:?}: {e}");
                EnvFilter::new(&cfg.level)
            })
        }
        _ => EnvFilter::new(&cfg.level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
