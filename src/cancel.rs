//! A stop request (SIGINT/SIGTERM) that the transfer engine honours cooperatively: workers stop
//! at their next await, record what they wrote, and are joined before the lock is released —
//! rather than the whole run being dropped mid-rename.

use std::sync::Arc;

use crate::error::Kind;

#[derive(Clone)]
pub struct Cancel {
    tx: Arc<tokio::sync::watch::Sender<Option<Kind>>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel {
            tx: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }
}

impl Cancel {
    /// Asks everything to stop; `kind` says why (Interrupted or Terminated).
    pub fn cancel(&self, kind: Kind) {
        self.tx.send_if_modified(|v| {
            let first = v.is_none();
            if first {
                *v = Some(kind);
            }
            first
        });
    }

    pub fn reason(&self) -> Option<Kind> {
        *self.tx.borrow()
    }

    /// Resolves once a stop was asked for.
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }
}
