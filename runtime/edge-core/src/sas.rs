//! SharedAccessSignature tokens, as IoT Hub and edgeHub make and check them.
//!
//! `SharedAccessSignature sr={quote(uri)}&sig={quote(base64 sig)}&se={expiry}` where
//! `uri = {hub}/devices/{device}/modules/{module}` and
//! `sig = base64(HMAC-SHA256(base64decode(key), quote(uri) + "\n" + se))`.
//! The checker HMACs the `sr` text exactly as it appears in the token.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// A module key: 32 random bytes, kept and passed base64-encoded. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ModuleKey(String);

impl std::fmt::Debug for ModuleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModuleKey(<redacted>)")
    }
}

impl ModuleKey {
    /// A fresh random key.
    ///
    /// # Errors
    /// When the operating system's random source fails.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)?;
        Ok(Self(B64.encode(raw)))
    }

    /// Wraps a base64 key.
    ///
    /// # Errors
    /// [`SasError::KeyEncoding`] when the key is not base64.
    pub fn from_base64(s: &str) -> Result<Self, SasError> {
        B64.decode(s).map_err(|_| SasError::KeyEncoding)?;
        Ok(Self(s.to_owned()))
    }

    /// The base64 text (to hand to the module; never log it).
    #[must_use]
    pub fn expose_base64(&self) -> &str {
        &self.0
    }

    /// HMAC-SHA256 of `data` with this key, base64-encoded (the workload API's sign result).
    #[must_use]
    pub fn sign(&self, data: &[u8]) -> String {
        let raw = B64.decode(&self.0).unwrap_or_default();
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&raw) else {
            return String::new();
        };
        mac.update(data);
        B64.encode(mac.finalize().into_bytes())
    }

    fn verify(&self, data: &[u8], sig_b64: &str) -> bool {
        let raw = B64.decode(&self.0).unwrap_or_default();
        let Ok(sig) = B64.decode(sig_b64) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&raw) else {
            return false;
        };
        mac.update(data);
        mac.verify_slice(&sig).is_ok()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The key is not base64.
    #[error("key is not base64")]
    KeyEncoding,
    /// The token does not have the `SharedAccessSignature sr=…&sig=…&se=…` form.
    #[error("token is not a SharedAccessSignature")]
    Format,
    /// The signature does not match.
    #[error("signature does not match")]
    Signature,
    /// `se` is in the past.
    #[error("token expired at {expiry} (now {now})")]
    Expired {
        /// The token's expiry, seconds since the epoch.
        expiry: u64,
        /// The time of the check.
        now: u64,
    },
    /// The audience (`sr`) is not this identity on this hub.
    #[error("token audience `{0}` does not match the connecting identity")]
    Audience(String),
}

/// The resource URI of a module identity.
#[must_use]
pub fn module_uri(hub: &str, device: &str, module: &str) -> String {
    format!("{hub}/devices/{device}/modules/{module}")
}

/// Makes a token for `uri` expiring at `expiry` (seconds since the epoch).
#[must_use]
pub fn make_token(key: &ModuleKey, uri: &str, expiry: u64) -> String {
    let sr = utf8_percent_encode(uri, QUOTE).to_string();
    let sig = key.sign(format!("{sr}\n{expiry}").as_bytes());
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}",
        utf8_percent_encode(&sig, QUOTE)
    )
}

/// Checks a token against `key`, the time `now` and the expected audiences: `sr` must decode
/// to `{host}/devices/{device}/modules/{module}` with `host` one of `hosts`.
///
/// # Errors
/// [`SasError`] naming the first check that failed (format, signature, expiry, audience).
pub fn verify_token(
    token: &str,
    key: &ModuleKey,
    now: u64,
    hosts: &[&str],
    device: &str,
    module: &str,
) -> Result<(), SasError> {
    let body = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or(SasError::Format)?;
    let (mut sr, mut sig, mut se) = (None, None, None);
    for field in body.split('&') {
        let (k, v) = field.split_once('=').ok_or(SasError::Format)?;
        match k {
            "sr" => sr = Some(v),
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            _ => {}
        }
    }
    let (sr, sig, se) = (
        sr.ok_or(SasError::Format)?,
        sig.ok_or(SasError::Format)?,
        se.ok_or(SasError::Format)?,
    );
    let expiry: u64 = se.parse().map_err(|_| SasError::Format)?;
    let sig = percent_decode_str(sig).decode_utf8_lossy();
    if !key.verify(format!("{sr}\n{se}").as_bytes(), &sig) {
        return Err(SasError::Signature);
    }
    if expiry <= now {
        return Err(SasError::Expired { expiry, now });
    }
    let audience = percent_decode_str(sr).decode_utf8_lossy();
    let ok = hosts
        .iter()
        .any(|h| audience.eq_ignore_ascii_case(&module_uri(h, device, module)));
    if !ok {
        return Err(SasError::Audience(audience.into_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = ModuleKey::generate().unwrap();
        let other = ModuleKey::generate().unwrap();
        let uri = module_uri("hub.local", "dev1", "mod1");
        let t = make_token(&key, &uri, 2_000);
        assert_eq!(
            verify_token(&t, &key, 1_000, &["hub.local"], "dev1", "mod1"),
            Ok(())
        );
        assert_eq!(
            verify_token(&t, &other, 1_000, &["hub.local"], "dev1", "mod1"),
            Err(SasError::Signature)
        );
        assert!(matches!(
            verify_token(&t, &key, 2_000, &["hub.local"], "dev1", "mod1"),
            Err(SasError::Expired { .. })
        ));
        assert!(matches!(
            verify_token(&t, &key, 1_000, &["hub.local"], "dev1", "mod2"),
            Err(SasError::Audience(_))
        ));
        assert_eq!(
            verify_token("password", &key, 1_000, &["hub.local"], "dev1", "mod1"),
            Err(SasError::Format)
        );
    }

    #[test]
    fn matches_the_documented_python_encoding() {
        // The `sr` is quote(uri, safe="") with upper-case hex, as the Azure SDK makes it.
        let key = ModuleKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let t = make_token(
            &key,
            "myhub.azure-devices.net/devices/dev1/modules/mod1",
            1_795_430_509,
        );
        assert!(t.starts_with(
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2Fmod1&sig="
        ));
        assert!(t.ends_with("&se=1795430509"));
    }

    #[test]
    fn debug_redacts_the_key() {
        let key = ModuleKey::generate().unwrap();
        assert!(!format!("{key:?}").contains(key.expose_base64()));
    }
}
