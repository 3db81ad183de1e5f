//! One AES-256-GCM key schedule, held in native memory for a chunk of rows. The JavaScript side builds the
//! associated data and lays out the stored form (src/codec/sealed-format.ts); this only seals and opens.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::mem::ManuallyDrop;
use zeroize::Zeroize;

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// An AES-256-GCM cipher whose every byte is zeroized when it is dropped: the AES round keys (for AES-256 the first
/// two are the key itself) and GHASH's key. The crates zeroize only part of that themselves: `aes` its round keys
/// (with its `zeroize` feature, Cargo.toml), while `polyval`'s run-time CPU detection never drops the state that
/// holds GHASH's key, so its `zeroize` feature never reaches it.
struct Wiped(ManuallyDrop<Aes256Gcm>);

impl Drop for Wiped {
    fn drop(&mut self) {
        // SAFETY: dropped once, here (ManuallyDrop), then never read again; ManuallyDrop is transparent, so the field's
        // address is the cipher's. Aes256Gcm owns no memory beyond its own bytes (arrays of round keys and field
        // elements, zero-sized CPU-feature tokens), so zeroizing those bytes is the whole of it, and all zeroes is a
        // valid value of every field.
        unsafe {
            ManuallyDrop::drop(&mut self.0);
            zeroize::zeroize_flat_type(std::ptr::addr_of_mut!(self.0).cast::<Aes256Gcm>());
        }
    }
}

#[napi]
pub struct GcmKey {
    /// None once released: the cipher was zeroized when it was dropped, and its memory freed at once. Boxed so that
    /// release frees it: held inline, its bytes (about 1 KiB) stayed allocated until the garbage collector finalized
    /// the JavaScript object, which a crypto thread's small heap rarely does; `rekey migrate-dek` schedules one key per
    /// tenant, so a thread held a KiB per tenant it had seen (a worker's RSS grew with the table).
    cipher: Option<Box<Wiped>>,
}

fn length(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::new(Status::InvalidArg, format!("{what} is {got} bytes, not {want}")))
    }
}

#[napi]
impl GcmKey {
    /// Expands `key` (32 bytes); the caller zeroizes its own copy.
    #[napi(constructor)]
    pub fn new(key: &[u8]) -> Result<Self> {
        length("a key", key.len(), KEY_BYTES)?;
        let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| Error::from_reason("a key is 32 bytes"))?;
        Ok(GcmKey { cipher: Some(Box::new(Wiped(ManuallyDrop::new(cipher)))) })
    }

    fn cipher(&self) -> Result<&Aes256Gcm> {
        self.cipher
            .as_ref()
            .map(|wiped| &*wiped.0)
            .ok_or_else(|| Error::from_reason("this key was released"))
    }

    /// Writes `ciphertext ‖ tag` of `plaintext` under `nonce`, bound to `aad`, into `out` (plaintext + 16 bytes).
    /// The caller allocates `out`: a buffer made here would cost more than the cipher itself.
    #[napi]
    pub fn seal_into(&self, nonce: &[u8], plaintext: &[u8], aad: &[u8], mut out: Buffer) -> Result<()> {
        length("a nonce", nonce.len(), NONCE_BYTES)?;
        let n = plaintext.len();
        length("the output", out.len(), n + TAG_BYTES)?;
        let out = out.as_mut();
        out[..n].copy_from_slice(plaintext);
        let tag = self
            .cipher()?
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut out[..n])
            .map_err(|_| Error::from_reason("AES-GCM refused to seal"))?;
        out[n..].copy_from_slice(&tag);
        Ok(())
    }

    /// Writes the plaintext into `out` (as long as the ciphertext) and returns true, or zeroizes `out` and returns
    /// false when authentication fails (wrong key, tampered value, other associated data).
    #[napi]
    pub fn open_into(&self, nonce: &[u8], ciphertext: &[u8], tag: &[u8], aad: &[u8], mut out: Buffer) -> Result<bool> {
        length("a nonce", nonce.len(), NONCE_BYTES)?;
        length("a tag", tag.len(), TAG_BYTES)?;
        length("the output", out.len(), ciphertext.len())?;
        let out = out.as_mut();
        out.copy_from_slice(ciphertext);
        match self
            .cipher()?
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, out, Tag::from_slice(tag))
        {
            Ok(()) => Ok(true),
            Err(_) => {
                // What was deciphered may be a real plaintext bound to other data (a value copied to another row).
                out.zeroize();
                Ok(false)
            }
        }
    }

    /// Expands another `key` (32 bytes) in this object, its previous schedule zeroized and freed first: a caller
    /// with many short-lived keys (a migration's DEKs, one per tenant) reuses a few objects instead of leaving one per
    /// key for the garbage collector to finalize.
    #[napi]
    pub fn rekey(&mut self, key: &[u8]) -> Result<()> {
        length("a key", key.len(), KEY_BYTES)?;
        self.cipher = None;
        let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| Error::from_reason("a key is 32 bytes"))?;
        self.cipher = Some(Box::new(Wiped(ManuallyDrop::new(cipher))));
        Ok(())
    }

    /// Drops the key schedule now (zeroized), rather than whenever the garbage collector gets to it.
    #[napi]
    pub fn release(&mut self) {
        self.cipher = None;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A chunk of rows rewrapped in one call (src/crypto/native-chunk.ts): for a format whose value is
// `prefix ‖ nonce ‖ ciphertext ‖ tag` in one column, bytea or standard base64 text (rekey's own, Mycelium's), each
// value of the packed column is opened under `from` and sealed under `to` into the packed output column, with the
// associated data built here from the packed text columns as src/codec/sealed-format.ts builds it. The nonces come
// from the caller (one buffer, filled by the caller's CSPRNG per chunk): nothing here draws random numbers. A row this
// cannot take exactly as the TypeScript codec would (another form, a text that is not what Node's encoder writes, an
// id that is not UTF-8 or not a UUID in its usual forms, a value that does not open) is marked and left to the
// caller, which takes it the codec's way. A plaintext DEK only ever lies in `Work`, zeroized after every row and when
// the call ends, however it ends.

/// The row was written: its new value is the next one in the output column.
const ROW_WRITTEN: u8 = 0;
/// The value is in the form but does not open under `from` (wrong key, tampered, not this row's).
const ROW_NOT_OPENED: u8 = 1;
/// The value, or a column of the associated data, is not in the form this call reads.
const ROW_NOT_FORM: u8 = 2;

/// The largest `nonce ‖ ciphertext ‖ tag` this call takes; longer values go the codec's way.
const BODY_MAX: usize = 1024;

/// The bytes a row's plaintext passes through, zeroized after each row and on drop.
struct Work([u8; BODY_MAX]);

impl Drop for Work {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// One part of the associated-data recipe (src/crypto/native-chunk.ts `recipeProgram` writes them).
enum Part {
    Fixed(Vec<u8>),
    Column { index: usize, uuid: bool, prefixed: bool },
    KekId { prefixed: bool },
}

const PART_FIXED: u8 = 1;
const PART_COLUMN: u8 = 2;
const PART_KEK_ID: u8 = 3;
const FLAG_UUID: u8 = 1;
const FLAG_PREFIXED: u8 = 2;

fn invalid(what: &str) -> Error {
    Error::new(Status::InvalidArg, what.to_string())
}

/// The recipe: `PART_FIXED len(u32 LE) bytes`, `PART_COLUMN index(u8) flags(u8)`, `PART_KEK_ID flags(u8)`.
fn parse_recipe(program: &[u8], columns: usize) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut k = 0;
    let byte = |k: usize| program.get(k).copied().ok_or_else(|| invalid("the recipe ends early"));
    while k < program.len() {
        match program[k] {
            PART_FIXED => {
                let end = k.checked_add(5).filter(|&e| e <= program.len()).ok_or_else(|| invalid("the recipe ends early"))?;
                let length = u32::from_le_bytes([program[k + 1], program[k + 2], program[k + 3], program[k + 4]]) as usize;
                let stop = end.checked_add(length).filter(|&e| e <= program.len()).ok_or_else(|| invalid("the recipe ends early"))?;
                parts.push(Part::Fixed(program[end..stop].to_vec()));
                k = stop;
            }
            PART_COLUMN => {
                let index = byte(k + 1)? as usize;
                let flags = byte(k + 2)?;
                if index >= columns {
                    return Err(invalid("the recipe names a column it was not given"));
                }
                parts.push(Part::Column { index, uuid: flags & FLAG_UUID != 0, prefixed: flags & FLAG_PREFIXED != 0 });
                k += 3;
            }
            PART_KEK_ID => {
                let flags = byte(k + 1)?;
                parts.push(Part::KekId { prefixed: flags & FLAG_PREFIXED != 0 });
                k += 2;
            }
            _ => return Err(invalid("the recipe has a part it does not know")),
        }
    }
    Ok(parts)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A UUID's 16 bytes from its text: 36 characters with dashes at 8, 13, 18, 23, or 32 hex digits (as packedUuid in
/// src/codec/sealed-format.ts); None for anything else, which the codec's own reading decides.
fn uuid_bytes(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let dashed = text.len() == 36;
    if !dashed && text.len() != 32 {
        return None;
    }
    if dashed && (text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-') {
        return None;
    }
    let mut k = 0;
    for _ in 0..16 {
        if dashed && (k == 8 || k == 13 || k == 18 || k == 23) {
            k += 1;
        }
        out.push((hex_value(text[k])? << 4) | hex_value(text[k + 1])?);
        k += 2;
    }
    Some(())
}

/// The row's associated data into `out` (cleared first), or None where only the codec can tell.
fn build_aad(parts: &[Part], fields: &[Option<&[u8]>], kek_id: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    for part in parts {
        match part {
            Part::Fixed(bytes) => out.extend_from_slice(bytes),
            Part::Column { index, uuid, prefixed } => {
                let text = fields[*index]?;
                if *uuid {
                    if *prefixed {
                        out.extend_from_slice(&16u32.to_be_bytes());
                    }
                    uuid_bytes(text, out)?;
                } else {
                    // The column's string written as UTF-8 is these bytes when they are UTF-8.
                    std::str::from_utf8(text).ok()?;
                    if *prefixed {
                        out.extend_from_slice(&u32::try_from(text.len()).ok()?.to_be_bytes());
                    }
                    out.extend_from_slice(text);
                }
            }
            Part::KekId { prefixed } => {
                if *prefixed {
                    out.extend_from_slice(&u32::try_from(kek_id.len()).ok()?.to_be_bytes());
                }
                out.extend_from_slice(kek_id);
            }
        }
    }
    Some(())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Each byte's value in the standard alphabet, or -1.
const BASE64_VALUES: [i8; 256] = {
    let mut table = [-1i8; 256];
    let mut k = 0;
    while k < 64 {
        table[ALPHABET[k] as usize] = k as i8;
        k += 1;
    }
    table
};

#[inline(always)]
fn base64_value(c: u8) -> i32 {
    BASE64_VALUES[c as usize] as i32
}

/// Standard base64 with padding, only as Node's encoder writes it (src/codec/base64-bytes.ts decodeBase64Into):
/// the decoded length, or None.
fn decode_base64(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let length = input.len();
    if length % 4 != 0 {
        return None;
    }
    if length == 0 {
        return Some(0);
    }
    let pad = if input[length - 1] == b'=' { if input[length - 2] == b'=' { 2 } else { 1 } } else { 0 };
    let size = (length / 4) * 3 - pad;
    if size > out.len() {
        return None;
    }
    let full = length - if pad > 0 { 4 } else { 0 };
    let mut o = 0;
    let mut k = 0;
    while k < full {
        let (a, b, c, d) =
            (base64_value(input[k]), base64_value(input[k + 1]), base64_value(input[k + 2]), base64_value(input[k + 3]));
        if (a | b | c | d) < 0 {
            return None;
        }
        let n = (a << 18) | (b << 12) | (c << 6) | d;
        out[o] = (n >> 16) as u8;
        out[o + 1] = (n >> 8) as u8;
        out[o + 2] = n as u8;
        o += 3;
        k += 4;
    }
    if pad > 0 {
        let a = base64_value(input[k]);
        let b = base64_value(input[k + 1]);
        let c = if pad == 1 { base64_value(input[k + 2]) } else { 0 };
        if (a | b | c) < 0 {
            return None;
        }
        let n = (a << 18) | (b << 12) | (c << 6);
        out[o] = (n >> 16) as u8;
        o += 1;
        if pad == 1 {
            out[o] = (n >> 8) as u8;
            o += 1;
        }
    }
    Some(o)
}

/// Standard base64 of `input`, padded, into `out`: its length (base64Length).
fn encode_base64(input: &[u8], out: &mut [u8]) -> usize {
    let mut o = 0;
    let mut chunks = input.chunks_exact(3);
    for c in &mut chunks {
        let n = ((c[0] as u32) << 16) | ((c[1] as u32) << 8) | c[2] as u32;
        out[o] = ALPHABET[(n >> 18) as usize];
        out[o + 1] = ALPHABET[((n >> 12) & 63) as usize];
        out[o + 2] = ALPHABET[((n >> 6) & 63) as usize];
        out[o + 3] = ALPHABET[(n & 63) as usize];
        o += 4;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let n = ((rest[0] as u32) << 16) | if rest.len() == 2 { (rest[1] as u32) << 8 } else { 0 };
        out[o] = ALPHABET[(n >> 18) as usize];
        out[o + 1] = ALPHABET[((n >> 12) & 63) as usize];
        out[o + 2] = if rest.len() == 2 { ALPHABET[((n >> 6) & 63) as usize] } else { b'=' };
        out[o + 3] = b'=';
        o += 4;
    }
    o
}

/// A packed column's values one after another: lengths (negative: NULL) over the bytes; None when they overrun.
fn split_column<'a>(lengths: &[i32], bytes: &'a [u8]) -> Result<Vec<Option<&'a [u8]>>> {
    let mut values = Vec::with_capacity(lengths.len());
    let mut at = 0usize;
    for &length in lengths {
        if length < 0 {
            values.push(None);
            continue;
        }
        let end = at.checked_add(length as usize).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| invalid("a column's lengths run past its bytes"))?;
        values.push(Some(&bytes[at..end]));
        at = end;
    }
    Ok(values)
}

fn span<T>(slice: &[T]) -> (usize, usize) {
    let start = slice.as_ptr() as usize;
    (start, start + std::mem::size_of_val(slice))
}

/// Rewraps a chunk (see above). `form`: encoding (0 bytea, 1 base64), then the plaintext's fixed length as a u32 LE
/// (0: any), then the prefix's length (u8) and bytes. Writes each written row's index into `indexes`, its value's
/// length into `out_lengths` and its value into `out` (one after another), and every row's outcome into `outcomes`
/// (ROW_*); returns how many rows it wrote. The outputs may share no memory with each other or with any input.
#[napi]
#[allow(clippy::too_many_arguments)]
pub fn rewrap_chunk(
    from: &GcmKey,
    to: &GcmKey,
    form: Uint8Array,
    recipe: Uint8Array,
    from_kek_id: Uint8Array,
    to_kek_id: Uint8Array,
    value_lengths: Int32Array,
    value_bytes: Uint8Array,
    aad_lengths: Vec<Int32Array>,
    aad_bytes: Vec<Uint8Array>,
    nonces: Uint8Array,
    mut out: Uint8Array,
    mut out_lengths: Int32Array,
    mut indexes: Int32Array,
    mut outcomes: Uint8Array,
) -> Result<u32> {
    // No output may alias anything else: a &mut over memory another argument also reads is undefined behaviour.
    let outputs = [span(&out), span(&out_lengths), span(&indexes), span(&outcomes)];
    let mut inputs = vec![
        span(&form),
        span(&recipe),
        span(&from_kek_id),
        span(&to_kek_id),
        span(&value_lengths),
        span(&value_bytes),
        span(&nonces),
    ];
    inputs.extend(aad_lengths.iter().map(|a| span(a)));
    inputs.extend(aad_bytes.iter().map(|a| span(a)));
    for (i, o) in outputs.iter().enumerate() {
        let others = outputs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s).chain(inputs.iter());
        for s in others {
            if o.0 < o.1 && s.0 < s.1 && o.0 < s.1 && s.0 < o.1 {
                return Err(invalid("an output shares memory with another argument"));
            }
        }
    }
    let count = value_lengths.len();
    if out_lengths.len() < count || indexes.len() < count || outcomes.len() < count {
        return Err(invalid("an output array is shorter than the chunk"));
    }
    if nonces.len() != count * NONCE_BYTES {
        return Err(invalid("the nonces are not 12 bytes a row"));
    }
    if aad_lengths.len() != aad_bytes.len() {
        return Err(invalid("the associated data's columns have lengths and bytes in pairs"));
    }
    if form.len() < 6 {
        return Err(invalid("the form is too short"));
    }
    let base64 = match form[0] {
        0 => false,
        1 => true,
        _ => return Err(invalid("the form's encoding is bytea (0) or base64 (1)")),
    };
    let fixed = u32::from_le_bytes([form[1], form[2], form[3], form[4]]) as usize;
    let prefix_length = form[5] as usize;
    let prefix = form.get(6..6 + prefix_length).ok_or_else(|| invalid("the form's prefix is cut short"))?;
    let parts = parse_recipe(&recipe, aad_lengths.len())?;
    let has_kek_id = parts.iter().any(|p| matches!(p, Part::KekId { .. }));
    let values = split_column(&value_lengths, &value_bytes)?;
    let mut fields = Vec::with_capacity(aad_lengths.len());
    for (lengths, bytes) in aad_lengths.iter().zip(aad_bytes.iter()) {
        if lengths.len() != count {
            return Err(invalid("an associated-data column is not as long as the chunk"));
        }
        fields.push(split_column(lengths, bytes)?);
    }
    let from = from.cipher()?;
    let to = to.cipher()?;
    let out = out.as_mut();
    let out_lengths = out_lengths.as_mut();
    let indexes = indexes.as_mut();
    let outcomes = outcomes.as_mut();

    let mut work = Work([0u8; BODY_MAX]);
    let mut raw = [0u8; BODY_MAX]; // a text value decoded: nonce ‖ ciphertext ‖ tag, none of it secret
    let mut sealed = [0u8; BODY_MAX];
    let mut aad_from = Vec::with_capacity(256);
    let mut aad_to = Vec::with_capacity(256);
    let mut row_fields: Vec<Option<&[u8]>> = vec![None; fields.len()];
    let mut written = 0usize;
    let mut at = 0usize;
    for i in 0..count {
        outcomes[i] = ROW_NOT_FORM;
        let Some(value) = values[i] else { continue };
        if value.len() < prefix.len() || &value[..prefix.len()] != prefix {
            continue;
        }
        let encoded = &value[prefix.len()..];
        let body: &[u8] = if base64 {
            match decode_base64(encoded, &mut raw) {
                Some(size) => &raw[..size],
                None => continue,
            }
        } else {
            encoded
        };
        if body.len() < NONCE_BYTES + TAG_BYTES || body.len() > BODY_MAX {
            continue;
        }
        let n = body.len() - NONCE_BYTES - TAG_BYTES;
        if fixed != 0 && n != fixed {
            continue;
        }
        for (c, column) in fields.iter().enumerate() {
            row_fields[c] = column[i];
        }
        if build_aad(&parts, &row_fields, from_kek_id.as_ref(), &mut aad_from).is_none() {
            continue;
        }
        let aad_to: &[u8] = if has_kek_id {
            if build_aad(&parts, &row_fields, to_kek_id.as_ref(), &mut aad_to).is_none() {
                continue;
            }
            &aad_to
        } else {
            &aad_from
        };
        let size = if base64 { prefix.len() + body.len().div_ceil(3) * 4 } else { prefix.len() + body.len() };
        if at + size > out.len() {
            return Err(invalid("the output column is too short for the chunk"));
        }
        let clear = &mut work.0[..n];
        clear.copy_from_slice(&body[NONCE_BYTES..NONCE_BYTES + n]);
        let opened = from.decrypt_in_place_detached(
            Nonce::from_slice(&body[..NONCE_BYTES]),
            &aad_from,
            clear,
            Tag::from_slice(&body[NONCE_BYTES + n..]),
        );
        if opened.is_err() {
            // What was deciphered may be a real plaintext bound to other data (a value copied to another row).
            clear.zeroize();
            outcomes[i] = ROW_NOT_OPENED;
            continue;
        }
        let nonce = &nonces[i * NONCE_BYTES..(i + 1) * NONCE_BYTES];
        let tag = to.encrypt_in_place_detached(Nonce::from_slice(nonce), aad_to, clear);
        let tag = match tag {
            Ok(tag) => tag,
            Err(_) => {
                clear.zeroize();
                return Err(Error::from_reason("AES-GCM refused to seal"));
            }
        };
        // `clear` now holds the new ciphertext: nothing secret is left in `work`, which is zeroized all the same.
        let target = &mut out[at..at + size];
        target[..prefix.len()].copy_from_slice(prefix);
        if base64 {
            sealed[..NONCE_BYTES].copy_from_slice(nonce);
            sealed[NONCE_BYTES..NONCE_BYTES + n].copy_from_slice(clear);
            sealed[NONCE_BYTES + n..NONCE_BYTES + n + TAG_BYTES].copy_from_slice(&tag);
            encode_base64(&sealed[..body.len()], &mut target[prefix.len()..]);
        } else {
            let rest = &mut target[prefix.len()..];
            rest[..NONCE_BYTES].copy_from_slice(nonce);
            rest[NONCE_BYTES..NONCE_BYTES + n].copy_from_slice(clear);
            rest[NONCE_BYTES + n..].copy_from_slice(&tag);
        }
        clear.zeroize();
        outcomes[i] = ROW_WRITTEN;
        indexes[written] = i as i32;
        out_lengths[written] = size as i32;
        written += 1;
        at += size;
    }
    Ok(written as u32)
}

// ---------------------------------------------------------------------------------------------------------------
// A chunk of `rekey migrate-dek` rows in one call (src/rewrap/migrate-chunk.ts): per row, the tenant's DEK is opened
// under the KEK from the DEK row's packed text columns, then each legacy field of the row is opened under the KEK and
// sealed under that DEK, the associated data of all three built here from the recipes as the codecs build it, with
// nonces from the caller (one per non-NULL value of the chunk, in row order, field by field: the slot the caller's
// per-field path gives the same value). A row is taken whole or not at all: any of its values not in the form, not
// opening, or its DEK not read with it or not opening, and the row is marked and left to the caller's per-field path,
// which gives its outcome and reason. The DEK, its key schedule and every plaintext only ever lie in this call's
// stack, zeroized after each row and on every way out; the stack the call used is overwritten before it returns.

/// The row's fields were all sealed: their new values are the next ones in the output columns.
const MIGRATE_WRITTEN: u8 = 0;
/// The row is left to the caller's per-field path.
const MIGRATE_LEFT: u8 = 1;
/// The row has no value to migrate (every field NULL).
const MIGRATE_EMPTY: u8 = 2;

/// A format's header as src/crypto/native-chunk.ts writes it: encoding, fixed plaintext length, prefix.
struct Form<'a> {
    fixed: usize,
    prefix: &'a [u8],
}

/// Only standard base64 text (encoding 1) is read here; anything else is the caller's to refuse.
fn parse_form(form: &[u8]) -> Result<Form<'_>> {
    if form.len() < 6 {
        return Err(invalid("the form is too short"));
    }
    if form[0] != 1 {
        return Err(invalid("a migration's form is base64 text (1)"));
    }
    let fixed = u32::from_le_bytes([form[1], form[2], form[3], form[4]]) as usize;
    let prefix_length = form[5] as usize;
    let prefix = form.get(6..6 + prefix_length).ok_or_else(|| invalid("the form's prefix is cut short"))?;
    Ok(Form { fixed, prefix })
}

/// `value` after the form's prefix, decoded into `raw`: `nonce ‖ ciphertext ‖ tag` and the ciphertext's length.
fn decode_value<'r>(form: &Form, value: &[u8], raw: &'r mut [u8; BODY_MAX]) -> Option<(&'r [u8], usize)> {
    if value.len() < form.prefix.len() || &value[..form.prefix.len()] != form.prefix {
        return None;
    }
    let size = decode_base64(&value[form.prefix.len()..], raw)?;
    if size < NONCE_BYTES + TAG_BYTES {
        return None;
    }
    let n = size - NONCE_BYTES - TAG_BYTES;
    if form.fixed != 0 && n != form.fixed {
        return None;
    }
    Some((&raw[..size], n))
}

/// Opens `body` under `key` into `work[..n]`; zeroizes what was deciphered when it does not open.
fn open_body(key: &Aes256Gcm, body: &[u8], n: usize, aad: &[u8], work: &mut Work) -> bool {
    let clear = &mut work.0[..n];
    clear.copy_from_slice(&body[NONCE_BYTES..NONCE_BYTES + n]);
    let opened = key.decrypt_in_place_detached(
        Nonce::from_slice(&body[..NONCE_BYTES]),
        aad,
        clear,
        Tag::from_slice(&body[NONCE_BYTES + n..]),
    );
    if opened.is_err() {
        clear.zeroize();
    }
    opened.is_ok()
}

/// The packed columns of one chunk, split (see rewrap_chunk).
struct MigrateInput<'a> {
    kek: &'a Aes256Gcm,
    kek_id: &'a [u8],
    dek_form: Form<'a>,
    dek_parts: Vec<Part>,
    dek_values: Vec<Option<&'a [u8]>>,
    dek_fields: Vec<Vec<Option<&'a [u8]>>>,
    legacy: Vec<(Form<'a>, Vec<Part>)>,
    current: Vec<(Form<'a>, Vec<Part>)>,
    tenants: Vec<Option<&'a [u8]>>,
    values: Vec<Vec<Option<&'a [u8]>>>,
    nonces: &'a [u8],
}

/// The rows, with every secret in this frame or its callees'; kept out of line so that the caller can overwrite the
/// stack it used (scrub_stack) once it returns.
#[inline(never)]
fn migrate_rows(
    input: &MigrateInput,
    out: &mut [&mut [u8]],
    out_lengths: &mut [&mut [i32]],
    outcomes: &mut [u8],
) -> Result<u32> {
    let count = input.tenants.len();
    let fields = input.values.len();
    let mut work = Work([0u8; BODY_MAX]);
    let mut dek = Work([0u8; BODY_MAX]);
    let mut raw = [0u8; BODY_MAX];
    let mut sealed = [0u8; BODY_MAX];
    let mut aad = Vec::with_capacity(256);
    let mut dek_row: Vec<Option<&[u8]>> = vec![None; input.dek_fields.len()];
    let mut at = vec![0usize; fields];
    let mut written = 0usize;
    let mut slot = 0usize;
    for i in 0..count {
        let row_slot = slot;
        let present = input.values.iter().filter(|column| column[i].is_some()).count();
        slot += present;
        outcomes[i] = MIGRATE_LEFT;
        if present == 0 {
            outcomes[i] = MIGRATE_EMPTY;
            continue;
        }
        // The tenant's DEK, from the DEK row read with this row.
        let Some(wrapped) = input.dek_values[i] else { continue };
        let Some((body, n)) = decode_value(&input.dek_form, wrapped, &mut raw) else { continue };
        if n != KEY_BYTES {
            continue;
        }
        for (c, column) in input.dek_fields.iter().enumerate() {
            dek_row[c] = column[i];
        }
        if build_aad(&input.dek_parts, &dek_row, input.kek_id, &mut aad).is_none() {
            continue;
        }
        if !open_body(input.kek, body, n, &aad, &mut dek) {
            continue;
        }
        let Ok(cipher) = Aes256Gcm::new_from_slice(&dek.0[..KEY_BYTES]) else {
            dek.0[..KEY_BYTES].zeroize();
            continue;
        };
        dek.0[..KEY_BYTES].zeroize();
        let cipher = Wiped(ManuallyDrop::new(cipher));
        let tenant = [input.tenants[i]];
        let start = at.clone();
        let mut taken = true;
        let mut k = row_slot;
        for f in 0..fields {
            let Some(value) = input.values[f][i] else {
                continue;
            };
            let nonce = &input.nonces[k * NONCE_BYTES..(k + 1) * NONCE_BYTES];
            k += 1;
            let (legacy, legacy_parts) = &input.legacy[f];
            let (current, current_parts) = &input.current[f];
            let Some((body, n)) = decode_value(legacy, value, &mut raw) else {
                taken = false;
                break;
            };
            if current.fixed != 0 && n != current.fixed {
                taken = false;
                break;
            }
            if build_aad(legacy_parts, &tenant, input.kek_id, &mut aad).is_none() || !open_body(input.kek, body, n, &aad, &mut work) {
                taken = false;
                break;
            }
            let size = current.prefix.len() + body.len().div_ceil(3) * 4;
            if at[f] + size > out[f].len() {
                work.0[..n].zeroize();
                return Err(invalid("an output column is too short for the chunk"));
            }
            if build_aad(current_parts, &tenant, b"", &mut aad).is_none() {
                work.0[..n].zeroize();
                taken = false;
                break;
            }
            let clear = &mut work.0[..n];
            let tag = match cipher.0.encrypt_in_place_detached(Nonce::from_slice(nonce), &aad, clear) {
                Ok(tag) => tag,
                Err(_) => {
                    clear.zeroize();
                    return Err(Error::from_reason("AES-GCM refused to seal"));
                }
            };
            // `clear` now holds the new ciphertext: nothing secret is left in `work`, zeroized all the same.
            sealed[..NONCE_BYTES].copy_from_slice(nonce);
            sealed[NONCE_BYTES..NONCE_BYTES + n].copy_from_slice(clear);
            sealed[NONCE_BYTES + n..NONCE_BYTES + n + TAG_BYTES].copy_from_slice(&tag);
            clear.zeroize();
            let target = &mut out[f][at[f]..at[f] + size];
            target[..current.prefix.len()].copy_from_slice(current.prefix);
            encode_base64(&sealed[..body.len()], &mut target[current.prefix.len()..]);
            out_lengths[f][written] = size as i32;
            at[f] += size;
        }
        drop(cipher);
        if !taken {
            // Nothing of the row is kept: its values go the per-field way. What was staged is not secret.
            at.copy_from_slice(&start);
            continue;
        }
        for f in 0..fields {
            if input.values[f][i].is_none() {
                out_lengths[f][written] = -1;
            }
        }
        outcomes[i] = MIGRATE_WRITTEN;
        written += 1;
    }
    Ok(written as u32)
}

/// Overwrites the stack below the caller's frame, where migrate_rows and the cipher's code kept their temporaries
/// (a key schedule moved by value leaves its bytes where it was).
#[inline(never)]
fn scrub_stack() {
    let mut stack = [0xa5u8; 64 * 1024];
    stack.zeroize();
    std::hint::black_box(&mut stack);
}

/// Migrates a chunk (see above). `dek_form` and `dek_recipe` read the DEK's value and its associated data (from the
/// DEK row's packed text columns `dek_aad_*`, under `kek_id`); `legacy_*` and `current_*` the fields' formats and
/// recipes, which read one column, the tenant (index 0); the current recipes take an empty KEK id. Writes the rows
/// taken (in order) into `out` and `out_lengths`, field by field (-1: NULL), and every row's outcome (MIGRATE_*);
/// returns how many rows it took. The outputs may share no memory with each other or with any input.
#[napi]
#[allow(clippy::too_many_arguments)]
pub fn migrate_chunk(
    kek: &GcmKey,
    kek_id: Uint8Array,
    dek_form: Uint8Array,
    dek_recipe: Uint8Array,
    dek_value_lengths: Int32Array,
    dek_value_bytes: Uint8Array,
    dek_aad_lengths: Vec<Int32Array>,
    dek_aad_bytes: Vec<Uint8Array>,
    legacy_forms: Vec<Uint8Array>,
    legacy_recipes: Vec<Uint8Array>,
    current_forms: Vec<Uint8Array>,
    current_recipes: Vec<Uint8Array>,
    tenant_lengths: Int32Array,
    tenant_bytes: Uint8Array,
    value_lengths: Vec<Int32Array>,
    value_bytes: Vec<Uint8Array>,
    nonces: Uint8Array,
    mut out: Vec<Uint8Array>,
    mut out_lengths: Vec<Int32Array>,
    mut outcomes: Uint8Array,
) -> Result<u32> {
    let mut outputs: Vec<(usize, usize)> = vec![span(&outcomes)];
    outputs.extend(out.iter().map(|a| span(a)));
    outputs.extend(out_lengths.iter().map(|a| span(a)));
    let mut inputs = vec![
        span(&kek_id),
        span(&dek_form),
        span(&dek_recipe),
        span(&dek_value_lengths),
        span(&dek_value_bytes),
        span(&tenant_lengths),
        span(&tenant_bytes),
        span(&nonces),
    ];
    for list in [&dek_aad_bytes, &legacy_forms, &legacy_recipes, &current_forms, &current_recipes, &value_bytes] {
        inputs.extend(list.iter().map(|a| span(a)));
    }
    inputs.extend(dek_aad_lengths.iter().map(|a| span(a)));
    inputs.extend(value_lengths.iter().map(|a| span(a)));
    for (i, o) in outputs.iter().enumerate() {
        let others = outputs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s).chain(inputs.iter());
        for s in others {
            if o.0 < o.1 && s.0 < s.1 && o.0 < s.1 && s.0 < o.1 {
                return Err(invalid("an output shares memory with another argument"));
            }
        }
    }
    let count = tenant_lengths.len();
    let fields = value_lengths.len();
    if fields == 0
        || value_bytes.len() != fields
        || legacy_forms.len() != fields
        || legacy_recipes.len() != fields
        || current_forms.len() != fields
        || current_recipes.len() != fields
        || out.len() != fields
        || out_lengths.len() != fields
    {
        return Err(invalid("every field has its values, forms, recipes and outputs"));
    }
    if dek_aad_lengths.len() != dek_aad_bytes.len() {
        return Err(invalid("the DEK's associated-data columns have lengths and bytes in pairs"));
    }
    if dek_value_lengths.len() != count
        || outcomes.len() < count
        || value_lengths.iter().any(|l| l.len() != count)
        || dek_aad_lengths.iter().any(|l| l.len() != count)
        || out_lengths.iter().any(|l| l.len() < count)
    {
        return Err(invalid("a column is not as long as the chunk"));
    }
    let present: usize = value_lengths.iter().map(|l| l.iter().filter(|&&v| v >= 0).count()).sum();
    if nonces.len() != present * NONCE_BYTES {
        return Err(invalid("the nonces are not 12 bytes a value"));
    }
    let dek_parts = parse_recipe(&dek_recipe, dek_aad_lengths.len())?;
    if dek_parts.iter().any(|p| matches!(p, Part::KekId { .. })) {
        return Err(invalid("a DEK's associated data bound to its label is the caller's"));
    }
    let mut legacy = Vec::with_capacity(fields);
    let mut current = Vec::with_capacity(fields);
    for f in 0..fields {
        legacy.push((parse_form(&legacy_forms[f])?, parse_recipe(&legacy_recipes[f], 1)?));
        current.push((parse_form(&current_forms[f])?, parse_recipe(&current_recipes[f], 1)?));
    }
    let mut dek_fields = Vec::with_capacity(dek_aad_lengths.len());
    for (lengths, bytes) in dek_aad_lengths.iter().zip(dek_aad_bytes.iter()) {
        dek_fields.push(split_column(lengths, bytes)?);
    }
    let mut values = Vec::with_capacity(fields);
    for (lengths, bytes) in value_lengths.iter().zip(value_bytes.iter()) {
        values.push(split_column(lengths, bytes)?);
    }
    let input = MigrateInput {
        kek: kek.cipher()?,
        kek_id: kek_id.as_ref(),
        dek_form: parse_form(&dek_form)?,
        dek_parts,
        dek_values: split_column(&dek_value_lengths, &dek_value_bytes)?,
        dek_fields,
        legacy,
        current,
        tenants: split_column(&tenant_lengths, &tenant_bytes)?,
        values,
        nonces: nonces.as_ref(),
    };
    let mut out: Vec<&mut [u8]> = out.iter_mut().map(|a| a.as_mut()).collect();
    let mut out_lengths: Vec<&mut [i32]> = out_lengths.iter_mut().map(|a| a.as_mut()).collect();
    let result = migrate_rows(&input, &mut out, &mut out_lengths, outcomes.as_mut());
    scrub_stack();
    result
}
