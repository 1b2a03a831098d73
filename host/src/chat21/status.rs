//! chat21 message status codes, as the clients expect them in the `status` field.
//! Only the codes inboxd itself writes are named here.

/// A chat21 message status (`models/messageConstants.js` of chat21-server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// The message could not be delivered (a policy rejected it).
    Failed = -100,
    /// The sender's own copy, and a group's timeline copy.
    Sent = 100,
    /// A recipient's copy.
    Delivered = 150,
    /// The recipient read it (what a client sends in a read receipt).
    Received = 200,
    /// The read receipt as echoed to the original sender.
    ReturnReceipt = 250,
}

impl Status {
    /// The numeric code as it goes on the wire.
    pub fn code(self) -> i64 {
        self as i32 as i64
    }
}
