//! Helpers for this crate's unit tests: a QoS 1 delivery waiting for a mailbox.

use std::sync::Arc;
use std::time::Instant;

use mqtt::QoS;

use crate::config::QueueOverflow;
use crate::mailbox::{Delivery, Mailbox, MailboxLimits};
use crate::message::Message;
use crate::router::Blocked;

/// A mailbox holding at most `max_messages`, dropping new ones beyond.
pub(crate) fn mailbox(max_messages: usize) -> Arc<Mailbox> {
    Mailbox::new(MailboxLimits {
        max_messages,
        max_bytes: 1 << 20,
        overflow: QueueOverflow::DropNewest,
    })
}

/// A QoS 1 message on `t` for `mailbox`, not yet queued.
pub(crate) fn blocked(mailbox: &Arc<Mailbox>) -> Blocked {
    let publish = mqtt::Publish {
        topic: "t".into(),
        qos: QoS::AtLeastOnce,
        packet_id: Some(1),
        ..Default::default()
    };
    let msg = Arc::new(Message::new(&publish, None, Instant::now()));
    Blocked {
        mailbox: mailbox.clone(),
        delivery: Delivery {
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            journal: None,
        },
    }
}
