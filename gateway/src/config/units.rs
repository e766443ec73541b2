//! Human units in config files: sizes like `"512MB"`, and secrets kept out of the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{de, Deserialize, Deserializer};

/// A size in bytes, written `"512MB"`, `"64 KiB"`, `"1.5GB"` or a plain number of bytes.
///
/// `kB`, `MB`, `GB` are powers of 1000; `KiB`, `MiB`, `GiB` are powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"512MB"` and friends.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a size; write it like \"512MB\", \"64KiB\" or \"2GB\"")
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "ki" | "kib" => 1 << 10,
            "mi" | "mib" => 1 << 20,
            "gi" | "gib" => 1 << 30,
            "ti" | "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "`{s}` has an unknown unit `{other}`; use B, kB, MB, GB, KiB, MiB or GiB"
                ))
            }
        };
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let bytes = (num * mult as f64).round() as u64;
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512MB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A secret (password, token, key) as written in the config: inline, or better, from a file
/// or an environment variable so it does not sit in the TOML.
///
/// ```toml
/// password = "inline, discouraged"
/// password = { file = "/etc/fieldgate/mqtt.pass" }
/// password = { env = "MQTT_PASSWORD" }
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// The secret itself.
    Inline(String),
    /// Read from a file (trailing newline removed); relative to the config file.
    File {
        /// The file holding the secret.
        file: PathBuf,
    },
    /// Read from an environment variable.
    Env {
        /// The variable's name.
        env: String,
    },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::File { file } => write!(f, "File({})", file.display()),
            SecretSource::Env { env } => write!(f, "Env({env})"),
        }
    }
}

impl SecretSource {
    /// Reads the secret. `base` is the config file's directory; `env` the process environment.
    pub fn resolve(&self, base: &Path, env: &[(String, String)]) -> Result<Secret, String> {
        match self {
            SecretSource::Inline(s) => Ok(Secret(s.clone())),
            SecretSource::File { file } => {
                let path = base.join(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                Ok(Secret(text.trim_end_matches(['\n', '\r']).to_string()))
            }
            SecretSource::Env { env: name } => env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Secret(v.clone()))
                .ok_or_else(|| format!("environment variable {name} is not set")),
        }
    }
}

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// `#[serde(default, deserialize_with = "Secret::deserialize_text")]` for an
    /// `Option<String>` that may hold a secret (a token; an access token used as MQTT
    /// username): a string is taken as is, anything else is refused without showing it.
    /// serde's own message would quote a token written without quotes ("found integer
    /// `1234…`") into `fieldgate check`'s output and the log of a refused reload.
    pub fn deserialize_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        secret_text(d)
    }
}

fn secret_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl V {
        fn number<E: de::Error>(&self) -> E {
            E::invalid_type(de::Unexpected::Other("a number"), self)
        }
    }
    impl de::Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(self.number())
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_unit_families() {
        let cases = [
            ("512MB", Ok(512_000_000)),
            ("64 KiB", Ok(65_536)),
            ("1.5GB", Ok(1_500_000_000)),
            ("1GiB", Ok(1 << 30)),
            ("4096", Ok(4096)),
            ("12 parsecs", Err("unknown unit")),
            ("MB", Err("is not a size")),
        ];
        for (input, expected) in cases {
            match (ByteSize::parse(input), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got.0, want, "{input}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
    }

    #[test]
    fn secrets_come_from_inline_file_or_env_and_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), "hunter2\n").expect("write");
        let env = vec![("PW".to_string(), "from-env".to_string())];
        let parse = |s: &str| -> SecretSource {
            #[derive(Deserialize)]
            struct T {
                p: SecretSource,
            }
            serde_json::from_str::<T>(s).expect("parses").p
        };
        let inline = parse(r#"{"p":"s3cret"}"#);
        let file = parse(r#"{"p":{"file":"pw"}}"#);
        let var = parse(r#"{"p":{"env":"PW"}}"#);
        assert_eq!(
            inline.resolve(dir.path(), &env).expect("inline").expose(),
            "s3cret"
        );
        assert_eq!(
            file.resolve(dir.path(), &env).expect("file").expose(),
            "hunter2"
        );
        assert_eq!(
            var.resolve(dir.path(), &env).expect("env").expose(),
            "from-env"
        );
        assert!(parse(r#"{"p":{"env":"NOPE"}}"#)
            .resolve(dir.path(), &env)
            .is_err());
        let shown = format!(
            "{inline:?} {:?} {}",
            inline.resolve(dir.path(), &env).expect("ok"),
            Secret("x".into())
        );
        assert!(!shown.contains("s3cret") && !shown.contains('x'), "{shown}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_refused_without_showing_it() {
        #[derive(Debug, Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "Secret::deserialize_text")]
            token: Option<String>,
        }
        let ok: T = serde_json::from_str(r#"{"token":"t0k3n"}"#).expect("a string");
        assert_eq!(ok.token.as_deref(), Some("t0k3n"));
        let none: T = serde_json::from_str("{}").expect("absent");
        assert_eq!(none.token, None);
        for bad in ["7319462850123456789", "-73194628501", "7319.4628"] {
            let e = serde_json::from_str::<T>(&format!(r#"{{"token":{bad}}}"#))
                .expect_err("a number")
                .to_string();
            assert!(e.contains("a number") && !e.contains("7319"), "{e}");
        }
    }
}
