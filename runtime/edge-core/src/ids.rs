//! Device and module identities.
//!
//! # Invariants
//! An id is 1..=128 characters from the set Azure IoT Hub allows for device and module ids
//! (ASCII letters and digits plus `-.+%_#*?!(),:=@$'`), so it never contains `/`, white space
//! or a control character and can be embedded in a topic level as-is.

use std::fmt;

/// Why a string is not a valid device or module id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than 128 characters.
    #[error("id `{0}` is longer than 128 characters")]
    TooLong(String),
    /// The id holds a character IoT Hub does not allow.
    #[error(
        "id `{id}` contains `{ch}`, which is not allowed (letters, digits and -.+%_#*?!(),:=@$' only)"
    )]
    BadChar {
        /// The offending id.
        id: String,
        /// The first character that is not allowed.
        ch: char,
    },
}

fn check(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > 128 {
        return Err(IdError::TooLong(id.to_owned()));
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.+%_#*?!(),:=@$'".contains(*c)))
    {
        return Err(IdError::BadChar {
            id: id.to_owned(),
            ch,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            ///
            /// # Errors
            /// [`IdError`] when the id is empty, too long or holds a character that is not allowed.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                check(&id)?;
                Ok(Self(id))
            }

            /// The id as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// An IoT Hub device id (the edge device itself).
    DeviceId
);
id_type!(
    /// A module id; also the module's manifest key, crate and binary name.
    ModuleId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_azure_charset_and_rejects_the_rest() {
        assert!(ModuleId::new("onnx-scoring").is_ok());
        assert!(ModuleId::new("$edgeHub").is_ok());
        assert_eq!(ModuleId::new(""), Err(IdError::Empty));
        assert!(matches!(
            ModuleId::new("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            ModuleId::new("a b"),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            ModuleId::new("x".repeat(129)),
            Err(IdError::TooLong(_))
        ));
    }

    #[test]
    fn serde_validates() {
        let ok: ModuleId = serde_json::from_str("\"m1\"").unwrap();
        assert_eq!(ok.as_str(), "m1");
        assert!(serde_json::from_str::<ModuleId>("\"m/1\"").is_err());
    }
}
