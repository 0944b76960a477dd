//! Acknowledgement by reference counting: an event carries an [`AckToken`]; every sink
//! holds the event until it has written or dead-lettered it; when the last holder lets go
//! the token is dropped and reports its id to the source (e.g. for XACK).

use tokio::sync::mpsc;

/// Reports `id` on `acks` when dropped.
#[derive(Debug)]
pub struct AckToken {
    id: String,
    acks: mpsc::UnboundedSender<String>,
}

impl AckToken {
    pub fn new(id: String, acks: mpsc::UnboundedSender<String>) -> AckToken {
        AckToken { id, acks }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        // The source may be gone at shutdown; the entry then stays pending and is re-read.
        let _ = self.acks.send(std::mem::take(&mut self.id));
    }
}
