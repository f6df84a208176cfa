//! The on-disk record format.
//!
//! Every record is framed as `[u32 len][u32 crc][body]` (little endian), where `len` is the
//! body length and `crc` is CRC-32 (IEEE, `crc32fast`) over the four `len` bytes followed by
//! the body, so a torn or flipped length is caught as surely as a flipped body byte.
//!
//! Bodies start with a kind byte:
//!
//! | kind | body after the kind byte |
//! |---|---|
//! | 1 header | magic `EDGQ`, version `u8` = 1, segment id `u32`, base seq `u64` |
//! | 2 append | seq `u64`, priority `u8`, expires_at_ms `u64`, appended_ms `u64`, endpoint len `u16`, endpoint, payload (rest) |
//! | 3 ack | priority `u8`, endpoint len `u16`, endpoint, seqs `u64`... (rest) |
//! | 4 drop | up_to_seq `u64`, endpoint len `u16`, endpoint |
//!
//! Each segment file starts with one header record.

/// Bytes of framing before each body.
pub(crate) const FRAME: usize = 8;
/// Largest payload one record may carry.
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;
/// Largest body that recovery accepts; anything longer is a corrupt length.
pub(crate) const MAX_BODY: usize = MAX_PAYLOAD + 64 * 1024;

const KIND_HEADER: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_DROP: u8 = 4;
const MAGIC: &[u8; 4] = b"EDGQ";
const VERSION: u8 = 1;

/// Offset of the payload inside an append record, given the endpoint length.
pub(crate) const fn append_payload_offset(endpoint_len: usize) -> usize {
    FRAME + 1 + 8 + 1 + 8 + 8 + 2 + endpoint_len
}

/// Total record length of an append.
pub(crate) const fn append_len(endpoint_len: usize, payload_len: usize) -> usize {
    append_payload_offset(endpoint_len) + payload_len
}

/// Total record length of a segment header.
pub(crate) const HEADER_LEN: usize = FRAME + 1 + 4 + 1 + 4 + 8;

/// A decoded record body, borrowing from the buffer it was read from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    Header {
        segment: u32,
        base_seq: u64,
    },
    Append {
        seq: u64,
        priority: u8,
        expires_at_ms: u64,
        appended_ms: u64,
        endpoint: &'a str,
        payload: &'a [u8],
    },
    Ack {
        priority: u8,
        endpoint: &'a str,
        /// Little-endian `u64` sequence numbers, 8 bytes each.
        seqs: &'a [u8],
    },
    Drop {
        up_to_seq: u64,
        endpoint: &'a str,
    },
}

impl Record<'_> {
    /// The acked sequence numbers of an `Ack` record (empty for other kinds).
    pub(crate) fn ack_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        let seqs: &[u8] = match self {
            Record::Ack { seqs, .. } => seqs,
            _ => &[],
        };
        seqs.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes than the frame claims (a torn tail, or a corrupt length).
    Short,
    /// A length of zero or beyond [`MAX_BODY`].
    BadLength,
    /// Checksum mismatch.
    Checksum,
    /// Checksum fine but the body does not parse (unknown kind, bad field lengths).
    BadBody,
}

fn crc(len_bytes: [u8; 4], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(body);
    h.finalize()
}

/// Appends one framed record to `out`; `body` writes the body (kind byte included).
fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME]);
    body(out);
    let body_len = out.len() - start - FRAME;
    // Bodies are bounded by MAX_BODY (checked by the callers), far below u32::MAX.
    let len_bytes = u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes();
    let sum = crc(len_bytes, &out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

fn put_endpoint(out: &mut Vec<u8>, endpoint: &str) {
    // Endpoint length is validated (<= u16::MAX) before anything is encoded.
    let len = u16::try_from(endpoint.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&endpoint.as_bytes()[..usize::from(len)]);
}

pub(crate) fn encode_header(out: &mut Vec<u8>, segment: u32, base_seq: u64) {
    frame(out, |b| {
        b.push(KIND_HEADER);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&segment.to_le_bytes());
        b.extend_from_slice(&base_seq.to_le_bytes());
    });
}

pub(crate) struct AppendFields<'a> {
    pub(crate) seq: u64,
    pub(crate) priority: u8,
    pub(crate) expires_at_ms: u64,
    pub(crate) appended_ms: u64,
    pub(crate) endpoint: &'a str,
    pub(crate) payload: &'a [u8],
}

pub(crate) fn encode_append(out: &mut Vec<u8>, a: &AppendFields<'_>) {
    frame(out, |b| {
        b.reserve(append_len(a.endpoint.len(), a.payload.len()));
        b.push(KIND_APPEND);
        b.extend_from_slice(&a.seq.to_le_bytes());
        b.push(a.priority);
        b.extend_from_slice(&a.expires_at_ms.to_le_bytes());
        b.extend_from_slice(&a.appended_ms.to_le_bytes());
        put_endpoint(b, a.endpoint);
        b.extend_from_slice(a.payload);
    });
}

pub(crate) fn encode_ack(out: &mut Vec<u8>, priority: u8, endpoint: &str, seqs: &[u64]) {
    frame(out, |b| {
        b.push(KIND_ACK);
        b.push(priority);
        put_endpoint(b, endpoint);
        for s in seqs {
            b.extend_from_slice(&s.to_le_bytes());
        }
    });
}

/// Most seqs one ack record carries, so that a record stays far below [`MAX_BODY`].
pub(crate) const MAX_ACKS_PER_RECORD: usize = 64 * 1024;

pub(crate) fn encode_drop(out: &mut Vec<u8>, endpoint: &str, up_to_seq: u64) {
    frame(out, |b| {
        b.push(KIND_DROP);
        b.extend_from_slice(&up_to_seq.to_le_bytes());
        put_endpoint(b, endpoint);
    });
}

/// Reads the body length from a frame's first four bytes, validating its range.
pub(crate) fn body_len(frame_head: &[u8]) -> Result<usize, FrameError> {
    let head: [u8; 4] = frame_head
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Short)?;
    let len = usize::try_from(u32::from_le_bytes(head)).map_err(|_| FrameError::BadLength)?;
    if len == 0 || len > MAX_BODY {
        return Err(FrameError::BadLength);
    }
    Ok(len)
}

/// Decodes the record at the start of `buf`; returns it and its total framed length.
pub(crate) fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), FrameError> {
    let len = body_len(buf)?;
    if buf.len() < FRAME + len {
        return Err(FrameError::Short);
    }
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&buf[..4]);
    let mut sum = [0u8; 4];
    sum.copy_from_slice(&buf[4..8]);
    let body = &buf[FRAME..FRAME + len];
    if crc(len_bytes, body) != u32::from_le_bytes(sum) {
        return Err(FrameError::Checksum);
    }
    let record = parse_body(body).ok_or(FrameError::BadBody)?;
    Ok((record, FRAME + len))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn endpoint(&mut self) -> Option<&'a str> {
        let len = self.u16()?;
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }
}

fn parse_body(body: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader { buf: body };
    let record = match r.u8()? {
        KIND_HEADER => {
            if r.take(4)? != MAGIC || r.u8()? != VERSION {
                return None;
            }
            let segment = r.u32()?;
            let base_seq = r.u64()?;
            Record::Header { segment, base_seq }
        }
        KIND_APPEND => {
            let seq = r.u64()?;
            let priority = r.u8()?;
            let expires_at_ms = r.u64()?;
            let appended_ms = r.u64()?;
            let endpoint = r.endpoint()?;
            let payload = r.buf;
            r.buf = &[];
            Record::Append {
                seq,
                priority,
                expires_at_ms,
                appended_ms,
                endpoint,
                payload,
            }
        }
        KIND_ACK => {
            let priority = r.u8()?;
            let endpoint = r.endpoint()?;
            if !r.buf.len().is_multiple_of(8) {
                return None;
            }
            let seqs = r.buf;
            r.buf = &[];
            Record::Ack {
                priority,
                endpoint,
                seqs,
            }
        }
        KIND_DROP => {
            let up_to_seq = r.u64()?;
            let endpoint = r.endpoint()?;
            Record::Drop {
                up_to_seq,
                endpoint,
            }
        }
        _ => return None,
    };
    r.buf.is_empty().then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    #[test]
    fn round_trips_every_kind() {
        let h = one(|v| encode_header(v, 7, 42));
        assert_eq!(h.len(), HEADER_LEN);
        assert_eq!(
            decode(&h),
            Ok((
                Record::Header {
                    segment: 7,
                    base_seq: 42
                },
                HEADER_LEN
            ))
        );

        let a = one(|v| {
            encode_append(
                v,
                &AppendFields {
                    seq: 9,
                    priority: 3,
                    expires_at_ms: 100,
                    appended_ms: 50,
                    endpoint: "$upstream",
                    payload: b"hello",
                },
            );
        });
        assert_eq!(a.len(), append_len(9, 5));
        assert_eq!(&a[append_payload_offset(9)..], b"hello");
        let (rec, n) = decode(&a).unwrap();
        assert_eq!(n, a.len());
        assert_eq!(
            rec,
            Record::Append {
                seq: 9,
                priority: 3,
                expires_at_ms: 100,
                appended_ms: 50,
                endpoint: "$upstream",
                payload: b"hello"
            }
        );

        let k = one(|v| encode_ack(v, 2, "m/in", &[5, 1, 9]));
        let (rec, _) = decode(&k).unwrap();
        assert_eq!(rec.ack_seqs().collect::<Vec<_>>(), vec![5, 1, 9]);

        let d = one(|v| encode_drop(v, "m/in", 77));
        assert_eq!(
            decode(&d).unwrap().0,
            Record::Drop {
                up_to_seq: 77,
                endpoint: "m/in"
            }
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let rec = one(|v| encode_drop(v, "x", 1));
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip at byte {i} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn short_and_zero_frames_are_errors() {
        let rec = one(|v| encode_drop(v, "x", 1));
        for cut in 0..rec.len() {
            assert!(decode(&rec[..cut]).is_err());
        }
        assert_eq!(decode(&[0u8; 16]), Err(FrameError::BadLength));
    }
}
