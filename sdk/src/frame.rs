//! The batch framing of `sdk/macros/wit/sandmill.wit`: each frame is a little-endian
//! `u32` length followed by that many bytes.

/// Appends one frame holding `bytes`.
pub(crate) fn push(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or_else(|_| {
        // A single key or value of 4 GiB cannot exist in a 32-bit guest.
        panic!(
            "a frame of {} bytes does not fit the wire format",
            bytes.len()
        )
    });
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Reads the frame at `*pos`, advancing it; `None` at the end or on a
/// malformed batch.
pub(crate) fn next<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let header = buf.get(*pos..*pos + 4)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let body = buf.get(*pos + 4..*pos + 4 + len)?;
    *pos += 4 + len;
    Some(body)
}

/// A key as an error message shows it: text as is (cut at 200 bytes),
/// other bytes escaped.
pub(crate) fn shown(key: &[u8]) -> String {
    let cut = &key[..key.len().min(200)];
    let mut text = cut.escape_ascii().to_string();
    if let Ok(valid) = std::str::from_utf8(cut) {
        text = format!("{valid:?}");
    }
    if key.len() > cut.len() {
        text.push_str(" (cut)");
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        push(&mut buf, b"key");
        push(&mut buf, b"");
        push(&mut buf, "värde".as_bytes());
        let mut pos = 0;
        assert_eq!(next(&buf, &mut pos), Some(&b"key"[..]));
        assert_eq!(next(&buf, &mut pos), Some(&b""[..]));
        assert_eq!(next(&buf, &mut pos), Some("värde".as_bytes()));
        assert_eq!(next(&buf, &mut pos), None);
    }

    #[test]
    fn a_truncated_frame_is_the_end() {
        let mut buf = Vec::new();
        push(&mut buf, b"abcdef");
        buf.truncate(7);
        assert_eq!(next(&buf, &mut 0), None);
    }
}
