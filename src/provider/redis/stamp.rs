//! The bytes goworker keeps in Redis around a producer's payload.
//!
//! - In a processing list every delivery is stamped: `RS <n> RS <entry>`,
//!   where `<entry>` is what was taken from the queue and `n` counts this
//!   process's deliveries (a processing list belongs to one process start,
//!   so `n` alone tells its deliveries apart; the delivery id is
//!   `<tag>.<n>`, the tag being the ULID that ends the consumer id). No two
//!   deliveries share their bytes, so an ack (`LREM`) removes exactly its
//!   own delivery, and a resent ack removes nothing. The stamp costs a few
//!   bytes per job.
//! - In a queue an entry is either a producer's payload, as pushed, or, for
//!   a job that was recovered from a dead process (or handed back without
//!   an id of its own), a carried entry: `US <job id> US <recoveries> RS
//!   <payload>`. The job id is the delivery id of its first fetch, so a job
//!   pushed without an `id` keeps one id across recoveries, retries and
//!   dead letters; `recoveries` counts how often a dead process held it.
//!
//! `RS` is the byte 0x1e and `US` 0x1f: control characters that cannot
//! start a JSON document, so no valid job is mistaken for either form.
//! The Lua scripts build and take apart the same forms.

/// Record separator: starts a stamp and ends a header.
pub(super) const RS: u8 = 0x1e;
/// Unit separator: starts a carried entry.
pub(super) const US: u8 = 0x1f;

/// A delivery as it sits in a processing list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamped<'a> {
    /// Its number within the process that fetched it.
    pub(super) seq: u64,
    /// The entry as it was in the queue.
    pub(super) entry: Entry<'a>,
}

/// A queue entry: a payload, possibly carried with its id and recoveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry<'a> {
    /// The id given at its first fetch, for a carried entry.
    pub(super) origin: Option<&'a str>,
    /// How many times a dead process held it.
    pub(super) recoveries: u64,
    /// The producer's payload.
    pub(super) payload: &'a [u8],
}

/// Reads a stamped delivery; `None` when `raw` is not one (a foreign or
/// damaged entry, or one pushed into the list by an older version).
pub(super) fn stamped(raw: &[u8]) -> Option<Stamped<'_>> {
    let rest = raw.strip_prefix(&[RS])?;
    let end = rest.iter().position(|&b| b == RS)?;
    let (n, entry) = (&rest[..end], &rest[end + 1..]);
    let seq = std::str::from_utf8(n).ok()?.parse().ok()?;
    Some(Stamped {
        seq,
        entry: self::entry(entry),
    })
}

/// Reads a queue entry; anything that is not a well-formed carried entry
/// is a plain payload.
pub(super) fn entry(raw: &[u8]) -> Entry<'_> {
    let plain = Entry {
        origin: None,
        recoveries: 0,
        payload: raw,
    };
    let Some(rest) = raw.strip_prefix(&[US]) else {
        return plain;
    };
    let Some(a) = rest.iter().position(|&b| b == US) else {
        return plain;
    };
    let Some(b) = rest[a + 1..]
        .iter()
        .position(|&b| b == RS)
        .map(|b| a + 1 + b)
    else {
        return plain;
    };
    let origin = std::str::from_utf8(&rest[..a])
        .ok()
        .filter(|o| !o.is_empty());
    let count = std::str::from_utf8(&rest[a + 1..b]).ok();
    let (Some(origin), Some(Ok(recoveries))) = (origin, count.map(str::parse::<u64>)) else {
        return plain;
    };
    Entry {
        origin: Some(origin),
        recoveries,
        payload: &rest[b + 1..],
    }
}

/// The delivery id of a stamp, as text: `<tag>.<seq>`.
pub(super) fn delivery_id(tag: &str, seq: u64) -> String {
    format!("{tag}.{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stamped_fresh_and_carried() {
        let s = stamped(b"\x1e42\x1e{\"type\":\"noop\"}").unwrap();
        assert_eq!(s.seq, 42);
        assert_eq!(s.entry.origin, None);
        assert_eq!(s.entry.payload, b"{\"type\":\"noop\"}");
        let s = stamped(b"\x1e7\x1e\x1fT0.3\x1f2\x1e{}").unwrap();
        assert_eq!(s.entry.origin, Some("T0.3"));
        assert_eq!(s.entry.recoveries, 2);
        assert_eq!(s.entry.payload, b"{}");
        assert!(stamped(b"{}").is_none());
        assert!(stamped(b"\x1eT.1\x1e{}").is_none());
        // A damaged carried header leaves the whole entry as the payload.
        let e = entry(b"\x1fid\x1fmany\x1e{}");
        assert_eq!((e.origin, e.payload), (None, &b"\x1fid\x1fmany\x1e{}"[..]));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = stamped(&raw);
            let e = entry(&raw);
            prop_assert!(e.payload.len() <= raw.len());
        }

        #[test]
        fn decoding_never_panics_near_the_forms(
            parts in proptest::collection::vec(
                prop_oneof![Just(vec![RS]), Just(vec![US]), Just(b".".to_vec()),
                    "[0-9]{0,25}".prop_map(String::into_bytes),
                    proptest::collection::vec(any::<u8>(), 0..4)],
                0..10)
        ) {
            let raw: Vec<u8> = parts.concat();
            let _ = stamped(&raw);
            let _ = entry(&raw);
        }

        #[test]
        fn stamps_round_trip(seq in any::<u64>(),
                             origin in "[0-9A-Z.]{1,30}", n in any::<u64>(),
                             payload in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut carried = vec![US];
            carried.extend_from_slice(origin.as_bytes());
            carried.push(US);
            carried.extend_from_slice(n.to_string().as_bytes());
            carried.push(RS);
            carried.extend_from_slice(&payload);
            let mut raw = vec![RS];
            raw.extend_from_slice(seq.to_string().as_bytes());
            raw.push(RS);
            raw.extend_from_slice(&carried);
            let s = stamped(&raw).unwrap();
            prop_assert_eq!(s.seq, seq);
            prop_assert_eq!(s.entry.origin, Some(origin.as_str()));
            prop_assert_eq!(s.entry.recoveries, n);
            prop_assert_eq!(s.entry.payload, &payload[..]);
        }
    }
}
