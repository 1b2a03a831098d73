//! A settled message's id as the ledger keeps it for retransmissions: the ids inboxd mints
//! (hyphenated lowercase UUIDs) in 16 bytes inline, any other id as it came.

use uuid::Uuid;

/// A message id kept in memory for a while (see the ledger's retransmission window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptId {
    /// A UUID whose hyphenated lowercase text is the id.
    Uuid([u8; 16]),
    /// Any other id (one stored by another version, say), unchanged.
    Other(Box<str>),
}

impl KeptId {
    /// Keeps `id`: as 16 bytes when its UUID's text is exactly `id`.
    pub fn new(id: &str) -> KeptId {
        match Uuid::try_parse(id) {
            Ok(uuid) if uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == id => {
                KeptId::Uuid(uuid.into_bytes())
            }
            _ => KeptId::Other(id.into()),
        }
    }

    /// Whether this is `id`.
    pub fn is(&self, id: &str) -> bool {
        match self {
            KeptId::Uuid(bytes) => Uuid::from_bytes(*bytes).hyphenated().encode_lower(&mut Uuid::encode_buffer()) == id,
            KeptId::Other(kept) => kept.as_ref() == id,
        }
    }

    /// The id's text.
    pub fn text(&self) -> String {
        match self {
            KeptId::Uuid(bytes) => Uuid::from_bytes(*bytes).hyphenated().to_string(),
            KeptId::Other(kept) => kept.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_kept_in_16_bytes_and_every_id_comes_back_unchanged() {
        let minted = Uuid::now_v7().to_string();
        for id in [
            minted.as_str(),
            "0190B1C2-0000-7000-8000-000000000001",
            "{0190b1c2-0000-7000-8000-000000000001}",
            "m1",
            "",
        ] {
            let kept = KeptId::new(id);
            assert_eq!(kept.text(), id);
            assert!(kept.is(id));
            assert!(!kept.is("other"));
        }
        assert!(matches!(KeptId::new(&minted), KeptId::Uuid(_)));
        // Another spelling of the same UUID is another id.
        assert!(matches!(KeptId::new("0190B1C2-0000-7000-8000-000000000001"), KeptId::Other(_)));
        assert!(!KeptId::new(&minted).is(&minted.to_uppercase()));
    }
}
