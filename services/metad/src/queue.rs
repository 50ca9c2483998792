//! The consensus loop's input queue, with room kept for peer messages.
//!
//! Client requests (commands, reads, status, membership) and peer messages
//! share one bounded queue, but clients may hold only part of it: once
//! `client_share` client inputs wait, further ones are refused (503, retry),
//! while peer messages still find room. A flood of client commands therefore
//! never crowds out the Paxos messages that decide them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use crate::node::Input;

/// Why an input was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue (or the clients' share of it) is full.
    Full,
    /// The consensus loop has stopped.
    Stopped,
}

/// The sending side, cloned by every caller.
#[derive(Debug, Clone)]
pub struct Inputs {
    sender: SyncSender<Input>,
    clients: Arc<AtomicUsize>,
    client_share: usize,
}

/// The consensus loop's side.
#[derive(Debug)]
pub struct Queue {
    receiver: Receiver<Input>,
    clients: Arc<AtomicUsize>,
}

/// A queue of `capacity` inputs, of which clients may hold `client_share`.
pub fn queue(capacity: usize, client_share: usize) -> (Inputs, Queue) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
    let clients = Arc::new(AtomicUsize::new(0));
    (
        Inputs {
            sender,
            clients: clients.clone(),
            client_share: client_share.min(capacity),
        },
        Queue { receiver, clients },
    )
}

fn from_a_client(input: &Input) -> bool {
    !matches!(input, Input::Messages(_))
}

impl Inputs {
    /// Queues `input`, or says why not.
    pub fn send(&self, input: Input) -> Result<(), Refused> {
        let client = from_a_client(&input);
        if client && self.clients.fetch_add(1, Ordering::AcqRel) >= self.client_share {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        self.sender.try_send(input).map_err(|error| {
            if client {
                self.clients.fetch_sub(1, Ordering::AcqRel);
            }
            match error {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Disconnected(_) => Refused::Stopped,
            }
        })
    }
}

impl Queue {
    fn taken(&self, input: Input) -> Input {
        if from_a_client(&input) {
            self.clients.fetch_sub(1, Ordering::AcqRel);
        }
        input
    }

    /// The next input, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Input, RecvTimeoutError> {
        self.receiver.recv_timeout(timeout).map(|i| self.taken(i))
    }

    /// The next input if one waits.
    pub fn try_recv(&self) -> Option<Input> {
        self.receiver.try_recv().ok().map(|i| self.taken(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_fill_only_their_share_and_peer_messages_still_get_in() {
        let (inputs, queue) = queue(4, 2);
        let status = || Input::Status(tokio::sync::oneshot::channel().0);
        assert_eq!(inputs.send(status()), Ok(()));
        assert_eq!(inputs.send(status()), Ok(()));
        assert_eq!(
            inputs.send(status()),
            Err(Refused::Full),
            "over the clients' share"
        );
        assert_eq!(inputs.send(Input::Messages(Vec::new())), Ok(()));
        assert_eq!(inputs.send(Input::Messages(Vec::new())), Ok(()));
        assert_eq!(
            inputs.send(Input::Messages(Vec::new())),
            Err(Refused::Full),
            "the whole queue is full"
        );
        // Taking a client input gives its room back to clients.
        assert!(matches!(queue.try_recv(), Some(Input::Status(_))));
        assert!(matches!(queue.try_recv(), Some(Input::Status(_))));
        assert_eq!(inputs.send(status()), Ok(()));
        drop(queue);
        assert_eq!(
            inputs.send(Input::Messages(Vec::new())),
            Err(Refused::Stopped)
        );
    }
}
