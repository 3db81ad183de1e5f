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
