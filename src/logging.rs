//! Structured logs on stderr (journald): JSON by default, text on request.
//! Text is logfmt (every field `key=value`, a value quoted when it holds a
//! space, `=` or `"`), so that the same tools parse every line; a DN such
//! as `OU=payments,O=Example Org,CN=x` stays one value.
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
    let _ = match cfg.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => tracing_logfmt::builder()
            .subscriber_builder()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}
