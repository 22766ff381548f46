//! Shutdown signals: the first SIGTERM or SIGINT cancels one token that every task watches
//! (stop intake, checkpoint, exit within the grace period); a second one cancels `forced`,
//! after which the service stops waiting.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Tokens cancelled by the first and by the second signal.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    /// Cancelled by the first signal: stop taking work, finish or release what runs.
    pub graceful: CancellationToken,
    /// Cancelled by the second signal: stop waiting.
    pub forced: CancellationToken,
}

impl Shutdown {
    /// Starts listening for SIGTERM and SIGINT.
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = Self {
            graceful: CancellationToken::new(),
            forced: CancellationToken::new(),
        };
        let tokens = shutdown.clone();
        tokio::spawn(async move {
            for (n, token) in [tokens.graceful, tokens.forced].into_iter().enumerate() {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::info!(signal = n + 1, "shutdown signal received");
                token.cancel();
            }
        });
        Ok(shutdown)
    }
}
