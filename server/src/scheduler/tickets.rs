//! Task tickets: the control plane marks each task attempt it publishes
//! with an HMAC of (task, attempt) under a key only it holds; the worker
//! the message is delivered to puts the mark on the attempt's events, and
//! the recorder drops any event whose mark is wrong. So a NATS client that
//! may publish events but was not delivered the task (another worker, a
//! forger with a worker's password) cannot start or finish it.

use hmac::Mac as _;
use sandmill_runtime::message::{TaskEvent, TaskMessage};

use super::Scheduler;

type Hmac = hmac::Hmac<sha2::Sha256>;

impl Scheduler {
    /// The ticket of `task`'s `attempt`: 32 hex digits.
    pub(crate) fn ticket(&self, task: i64, attempt: i64) -> String {
        let key = self.inner.ticket_key.get().map_or(&[][..], Vec::as_slice);
        let mut mac = Hmac::new_from_slice(key).expect("HMAC takes any key");
        mac.update(format!("{task}.{attempt}").as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Marks messages with their tickets.
    pub(crate) fn stamp(&self, messages: &mut [TaskMessage]) {
        for message in messages {
            message.ticket = self.ticket(message.task_id, message.attempt);
        }
    }

    /// Whether an event from the broker carries its attempt's ticket
    /// (progress, only shown live, carries none).
    pub(crate) fn ticketed(&self, event: &TaskEvent) -> bool {
        let (task, attempt, ticket) = match event {
            TaskEvent::Started {
                task_id,
                attempt,
                ticket,
                ..
            } => (*task_id, *attempt, ticket),
            TaskEvent::Finished(result) => (result.task_id, result.attempt, &result.ticket),
            TaskEvent::Progress { .. } => return true,
        };
        let expected = self.ticket(task, attempt);
        // Compared in constant time, like any secret.
        ticket.len() == expected.len()
            && ticket
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    }
}
