//! `[[uplinks]] type = "https"`: the section as written and its validation into
//! [`HttpsSettings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldgate_adapter::ConfigProblem;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::{Secret, SecretSource};
use crate::uplink::tls::TlsFiles;

/// The `type = "https"` section as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsUplinkConfig {
    /// Where batches are POSTed: `https://host[:port]/path` (`http://` is accepted for a
    /// local endpoint, with a warning: readings then cross the network in clear).
    pub url: String,
    /// Extra request headers. A value is a string, `{ file = "..." }` or `{ env = "VAR" }`
    /// (an API key, say); values are never logged.
    #[serde(default, deserialize_with = "secret_headers")]
    pub headers: BTreeMap<String, SecretSource>,
    /// `Authorization: Bearer <token>`: inline, `{ file = "..." }` or `{ env = "VAR" }`.
    #[serde(default)]
    pub bearer_token: Option<SecretSource>,
    /// HTTP basic auth user name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP basic auth password: inline, `{ file = "..." }` or `{ env = "VAR" }`.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// PEM file with the CA certificates to trust; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. Dangerous: logged as a warning at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`). Default false.
    #[serde(default)]
    pub gzip: bool,
    /// How long one request may take, from connect to the end of the response. Default `"30s"`.
    #[serde(default = "default_timeout", with = "fieldgate_adapter::duration")]
    pub timeout: Duration,
    /// How long a connection (TCP + TLS handshake) may take. Default `"10s"`.
    #[serde(
        default = "default_connect_timeout",
        with = "fieldgate_adapter::duration"
    )]
    pub connect_timeout: Duration,
    /// Most requests in flight at once (each on its own connection). Default 4.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The header carrying the batch's idempotency key
    /// (`<queue_id>:<first_seq>-<last_seq>`); `""` leaves it out. Default `"Idempotency-Key"`.
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
    /// Poll here for commands from the cloud (GET, same auth as `url`); default: no commands.
    /// `https://` (or `http://`), the same scheme as `url`.
    #[serde(default)]
    pub commands_url: Option<String>,
    /// How often `commands_url` is polled (again at once after a poll that brought commands).
    /// Default `"30s"`, at least `"1s"`; needs `commands_url`.
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub commands_interval: Option<Duration>,
    /// Where command responses are POSTed, one JSON body each. Default: `commands_url` +
    /// `/responses`; needs `commands_url`.
    #[serde(default)]
    pub responses_url: Option<String>,
}

/// `headers` must be a table; anything else is refused without showing it (serde's own
/// message would quote `headers = "X-Api-Key: <the key>"` into `fieldgate check`'s output).
fn secret_headers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SecretSource>, D::Error> {
    use serde::de::{Error, MapAccess, Unexpected, Visitor};
    struct Headers;
    impl Headers {
        fn refuse<E: Error>(&self, what: &'static str) -> E {
            E::invalid_type(Unexpected::Other(what), self)
        }
    }
    impl<'de> Visitor<'de> for Headers {
        type Value = BTreeMap<String, SecretSource>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table of header names and values, like { \"X-Api-Key\" = { env = \"API_KEY\" } }")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            BTreeMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
        fn visit_str<E: Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(self.refuse("a string"))
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(self.refuse("a number"))
        }
        fn visit_i128<E: Error>(self, _: i128) -> Result<Self::Value, E> {
            Err(self.refuse("a number"))
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(self.refuse("a number"))
        }
        fn visit_u128<E: Error>(self, _: u128) -> Result<Self::Value, E> {
            Err(self.refuse("a number"))
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(self.refuse("a number"))
        }
    }
    d.deserialize_any(Headers)
}

const fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_max_in_flight() -> usize {
    4
}
fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}
/// `commands_interval` when not given.
const DEFAULT_COMMANDS_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest `commands_interval`.
const MIN_COMMANDS_INTERVAL: Duration = Duration::from_secs(1);

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Nothing beyond the configured headers (and the client certificate, if any).
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic ...`.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
}

/// Everything the HTTPS uplink needs, validated and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpsSettings {
    /// The endpoint.
    pub url: reqwest::Url,
    /// Extra headers, values resolved and marked sensitive (their `Debug` hides them).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Authentication.
    pub auth: Auth,
    /// CA file (resolved against the config directory).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (resolved).
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// Skip server certificate verification.
    pub insecure_skip_verify: bool,
    /// Gzip request bodies.
    pub gzip: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// In-flight window.
    pub max_in_flight: usize,
    /// Idempotency key header, if any.
    pub idempotency_header: Option<HeaderName>,
    /// Where to poll for commands and post their responses, if the uplink takes commands.
    pub commands: Option<HttpsCommands>,
}

/// The command endpoints of an HTTPS uplink (`commands_url` and the keys that go with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsCommands {
    /// Polled with GET for commands.
    pub url: reqwest::Url,
    /// Where each response is POSTed.
    pub responses_url: reqwest::Url,
    /// Time between polls.
    pub interval: Duration,
}

impl HttpsSettings {
    /// True for an `https://` url.
    pub fn tls(&self) -> bool {
        self.url.scheme() == "https"
    }
}

/// Headers fieldgate sets itself; configuring them would be ambiguous.
const RESERVED: &[&str] = &["content-type", "content-encoding", "content-length", "host"];

impl HttpsUplinkConfig {
    /// Parses the keys of a `type = "https"` section (without `id` and `type`) from TOML text,
    /// for tools and tests that build an uplink without a site config.
    pub fn from_toml(text: &str) -> Result<HttpsUplinkConfig, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| e.to_string())
    }

    /// Validates the section and resolves it. `base` is the config directory, `env` the
    /// process environment (for secrets).
    pub fn settings(
        &self,
        base: &Path,
        env: &[(String, String)],
    ) -> Result<HttpsSettings, Vec<ConfigProblem>> {
        let mut p = Vec::new();
        let url = http_url("url", &self.url, &mut p);
        let secret =
            |p: &mut Vec<ConfigProblem>, key: String, s: &SecretSource| -> Option<Secret> {
                match s.resolve(base, env) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        p.push(ConfigProblem::new(key, e));
                        None
                    }
                }
            };
        let bearer = self
            .bearer_token
            .as_ref()
            .and_then(|s| secret(&mut p, "bearer_token".into(), s));
        if bearer
            .as_ref()
            .is_some_and(|t| HeaderValue::from_str(&format!("Bearer {}", t.expose())).is_err())
        {
            p.push(ConfigProblem::new(
                "bearer_token",
                "holds characters a header cannot carry (control characters or non-ASCII)",
            ));
        }
        let password = self
            .password
            .as_ref()
            .and_then(|s| secret(&mut p, "password".into(), s));
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            let Some(value) = secret(&mut p, key.clone(), value) else {
                continue;
            };
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) if RESERVED.contains(&h.as_str()) => p.push(ConfigProblem::new(
                    key,
                    format!("`{name}` is set by fieldgate itself"),
                )),
                Ok(h) if h == reqwest::header::AUTHORIZATION && self.has_auth() => {
                    p.push(ConfigProblem::new(
                        key,
                        "conflicts with bearer_token / username: give one of them",
                    ));
                }
                Ok(h) => match HeaderValue::from_str(value.expose()) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        headers.push((h, v));
                    }
                    Err(_) => p.push(ConfigProblem::new(
                        key,
                        "the value holds characters a header cannot carry (control characters or non-ASCII)",
                    )),
                },
                Err(_) => p.push(ConfigProblem::new(
                    key,
                    format!("`{name}` is not a valid header name"),
                )),
            }
        }
        let auth = match (bearer, &self.username, password) {
            (None, None, None) => Auth::None,
            (Some(t), None, None) => Auth::Bearer(t),
            (None, Some(u), Some(pw)) => Auth::Basic {
                username: u.clone(),
                password: pw,
            },
            (None, Some(_), None) if self.password.is_none() => {
                p.push(ConfigProblem::new(
                    "password",
                    "username needs a password (HTTP basic auth)",
                ));
                Auth::None
            }
            (None, None, Some(_)) => {
                p.push(ConfigProblem::new(
                    "username",
                    "password needs a username (HTTP basic auth)",
                ));
                Auth::None
            }
            (Some(_), _, _) if self.username.is_some() || self.password.is_some() => {
                p.push(ConfigProblem::new(
                    "bearer_token",
                    "give either bearer_token or username/password, not both",
                ));
                Auth::None
            }
            // A secret that failed to resolve was reported above.
            _ => Auth::None,
        };

        let files = TlsFiles::resolve(
            base,
            self.ca_file.as_deref(),
            self.client_cert.as_deref(),
            self.client_key.as_deref(),
            &mut p,
        );
        let tls = url.as_ref().is_none_or(|u| u.scheme() == "https");
        if !tls && (files.any() || self.insecure_skip_verify) {
            p.push(ConfigProblem::new(
                "url",
                "TLS settings (ca_file, client_cert, insecure_skip_verify) need an https:// url",
            ));
        }
        for (k, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                p.push(ConfigProblem::new(k, "must be greater than zero"));
            }
        }
        if !(1..=64).contains(&self.max_in_flight) {
            p.push(ConfigProblem::new(
                "max_in_flight",
                format!("must be between 1 and 64, not {}", self.max_in_flight),
            ));
        }
        let idempotency_header = match self.idempotency_header.as_str() {
            "" => None,
            h => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    p.push(ConfigProblem::new(
                        "idempotency_header",
                        format!("`{h}` is not a valid header name"),
                    ));
                    None
                }
            },
        };
        let commands = self.commands(url.as_ref(), &mut p);
        if tls && p.is_empty() {
            files.check(self.insecure_skip_verify, &mut p);
        }
        match url {
            Some(url) if p.is_empty() => Ok(HttpsSettings {
                url,
                headers,
                auth,
                ca_file: files.ca_file,
                client_auth: files.client_auth,
                insecure_skip_verify: self.insecure_skip_verify,
                gzip: self.gzip,
                timeout: self.timeout,
                connect_timeout: self.connect_timeout,
                max_in_flight: self.max_in_flight,
                idempotency_header,
                commands,
            }),
            _ => Err(p),
        }
    }

    /// Validates `commands_url`, `commands_interval` and `responses_url` (`url` is the
    /// uplink's url, if valid: the command endpoints share its client, so its scheme).
    fn commands(
        &self,
        url: Option<&reqwest::Url>,
        p: &mut Vec<ConfigProblem>,
    ) -> Option<HttpsCommands> {
        let Some(text) = &self.commands_url else {
            for (key, given) in [
                ("commands_interval", self.commands_interval.is_some()),
                ("responses_url", self.responses_url.is_some()),
            ] {
                if given {
                    p.push(ConfigProblem::new(
                        key,
                        "needs commands_url (where the uplink polls for commands)",
                    ));
                }
            }
            return None;
        };
        let same_scheme = |p: &mut Vec<ConfigProblem>, key: &str, u: reqwest::Url| match url {
            Some(base) if base.scheme() != u.scheme() => {
                p.push(ConfigProblem::new(
                        key,
                        format!(
                            "must start with {}:// like `url`: one client with one TLS setup makes every request",
                            base.scheme()
                        ),
                    ));
                None
            }
            _ => Some(u),
        };
        let commands_url =
            http_url("commands_url", text, p).and_then(|u| same_scheme(p, "commands_url", u));
        let responses_url = match &self.responses_url {
            Some(r) => {
                http_url("responses_url", r, p).and_then(|u| same_scheme(p, "responses_url", u))
            }
            None => commands_url.as_ref().map(|c| {
                let mut r = c.clone();
                let path = format!("{}/responses", c.path().trim_end_matches('/'));
                r.set_path(&path);
                r
            }),
        };
        let interval = self.commands_interval.unwrap_or(DEFAULT_COMMANDS_INTERVAL);
        if interval < MIN_COMMANDS_INTERVAL {
            p.push(ConfigProblem::new(
                "commands_interval",
                format!(
                    "must be at least 1s, not {} (after a poll that brought commands the next one is made at once anyway)",
                    fieldgate_adapter::duration::format(interval)
                ),
            ));
            return None;
        }
        Some(HttpsCommands {
            url: commands_url?,
            responses_url: responses_url?,
            interval,
        })
    }

    fn has_auth(&self) -> bool {
        self.bearer_token.is_some() || self.username.is_some()
    }
}

/// Parses the http(s) url `text` of `key`; problems go to `p`.
///
/// A url with credentials (`https://user:pass@host`) is refused first, and without quoting
/// it: the other errors quote the url.
fn http_url(key: &str, text: &str, p: &mut Vec<ConfigProblem>) -> Option<reqwest::Url> {
    if crate::uplink::has_userinfo(text) {
        p.push(ConfigProblem::new(
            key,
            "must not hold credentials (`user:password@`); use username/password or bearer_token",
        ));
        return None;
    }
    match reqwest::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                p.push(ConfigProblem::new(
                    key,
                    "must not hold credentials; use username/password or bearer_token",
                ));
            }
            Some(u)
        }
        Ok(u) if u.host_str().is_none() => {
            p.push(ConfigProblem::new(key, format!("`{text}` has no host")));
            None
        }
        Ok(_) => {
            p.push(ConfigProblem::new(
                key,
                format!("`{text}` must start with https:// (or http://)"),
            ));
            None
        }
        Err(e) => {
            p.push(ConfigProblem::new(
                key,
                format!("`{text}` is not a valid url: {e}"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<HttpsSettings, Vec<(String, String)>> {
        let c = HttpsUplinkConfig::from_toml(text).map_err(|e| vec![(String::new(), e)])?;
        c.settings(Path::new("."), &[("TOKEN".into(), "t0k3n".into())])
            .map_err(|ps| ps.into_iter().map(|p| (p.key, p.message)).collect())
    }

    fn problem_keys(text: &str) -> Vec<String> {
        settings(text)
            .expect_err("config should be refused")
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn defaults_and_resolved_secrets() {
        let s = settings(
            r#"url = "https://ingest.example.com/v1/readings"
               bearer_token = { env = "TOKEN" }
               headers = { "X-Site" = "north" }"#,
        )
        .expect("valid");
        assert!(s.tls());
        assert_eq!(s.auth, Auth::Bearer(Secret::from("t0k3n")));
        assert_eq!(s.headers.len(), 1);
        assert_eq!(s.headers[0].0.as_str(), "x-site");
        assert_eq!(s.headers[0].1, "north");
        assert!(s.headers[0].1.is_sensitive());
        assert!(
            !format!("{s:?}").contains("north"),
            "header values stay out of Debug"
        );
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.max_in_flight, 4);
        assert_eq!(
            s.idempotency_header.as_ref().map(HeaderName::as_str),
            Some("idempotency-key")
        );
        assert!(!s.gzip);
        assert_eq!(s.commands, None);
    }

    #[test]
    fn command_endpoints_and_their_defaults() {
        let check = |extra: &str, want: Option<(&str, &str, u64)>| {
            let s = settings(&format!("url = \"https://x.example/in\"\n{extra}")).expect(extra);
            let got = s.commands.map(|c| {
                (
                    c.url.to_string(),
                    c.responses_url.to_string(),
                    c.interval.as_secs(),
                )
            });
            let want = want.map(|(u, r, i)| (u.to_string(), r.to_string(), i));
            assert_eq!(got, want, "{extra}");
        };
        check("", None);
        check(
            r#"commands_url = "https://x.example/v1/commands""#,
            Some((
                "https://x.example/v1/commands",
                "https://x.example/v1/commands/responses",
                30,
            )),
        );
        check(
            r#"commands_url = "https://x.example/v1/commands/?site=7"
               commands_interval = "5s""#,
            Some((
                "https://x.example/v1/commands/?site=7",
                "https://x.example/v1/commands/responses?site=7",
                5,
            )),
        );
        check(
            r#"commands_url = "https://x.example/"
               responses_url = "https://y.example/answers""#,
            Some(("https://x.example/", "https://y.example/answers", 30)),
        );
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases: &[(&str, &str)] = &[
            (r#"url = "ftp://x/""#, "url"),
            (r#"url = "https://u:p@x/""#, "url"),
            (r#"url = "not a url""#, "url"),
            (
                r#"url = "https://x/"
                   username = "u""#,
                "password",
            ),
            (
                r#"url = "https://x/"
                   password = "p""#,
                "username",
            ),
            (
                r#"url = "https://x/"
                   bearer_token = "t"
                   username = "u"
                   password = "p""#,
                "bearer_token",
            ),
            (
                r#"url = "https://x/"
                   bearer_token = { env = "MISSING" }"#,
                "bearer_token",
            ),
            (
                r#"url = "https://x/"
                   headers = { "Content-Type" = "text/plain" }"#,
                "headers.Content-Type",
            ),
            (
                r#"url = "https://x/"
                   headers = { "bad header" = "v" }"#,
                "headers.bad header",
            ),
            (
                r#"url = "https://x/"
                   client_cert = "Cargo.toml""#,
                "client_key",
            ),
            (
                r#"url = "https://x/"
                   ca_file = "no/such/ca.pem""#,
                "ca_file",
            ),
            (
                r#"url = "http://x/"
                   insecure_skip_verify = true"#,
                "url",
            ),
            (
                r#"url = "https://x/"
                   max_in_flight = 0"#,
                "max_in_flight",
            ),
            (
                r#"url = "https://x/"
                   timeout = "0s""#,
                "timeout",
            ),
            (
                r#"url = "https://x/"
                   idempotency_header = "a b""#,
                "idempotency_header",
            ),
            (
                r#"url = "https://x/"
                   bearer_token = "line\nbreak""#,
                "bearer_token",
            ),
            (
                r#"url = "https://x/"
                   commands_url = "ftp://x/commands""#,
                "commands_url",
            ),
            (
                r#"url = "https://x/"
                   commands_url = "http://x/commands""#,
                "commands_url",
            ),
            (
                r#"url = "https://x/"
                   commands_url = "https://x/commands"
                   responses_url = "https://u:p@x/r""#,
                "responses_url",
            ),
            (
                r#"url = "https://x/"
                   commands_url = "https://x/commands"
                   commands_interval = "500ms""#,
                "commands_interval",
            ),
            (
                r#"url = "https://x/"
                   commands_interval = "10s""#,
                "commands_interval",
            ),
            (
                r#"url = "https://x/"
                   responses_url = "https://x/r""#,
                "responses_url",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(problem_keys(text), vec![key.to_string()], "{text}");
        }
    }

    #[test]
    fn basic_auth_and_no_idempotency_header() {
        let s = settings(
            r#"url = "http://127.0.0.1:8080/in"
               username = "site"
               password = "pw"
               idempotency_header = """#,
        )
        .expect("valid");
        assert!(!s.tls());
        assert_eq!(
            s.auth,
            Auth::Basic {
                username: "site".into(),
                password: Secret::from("pw")
            }
        );
        assert_eq!(s.idempotency_header, None);
    }

    #[test]
    fn secrets_in_the_url_or_in_malformed_headers_are_never_echoed() {
        for url in [
            "https://site:pw-8Hk2@ingest.example.com/in",
            "https://site:pw-8Hk2@/in",
            "https://site:pw-8Hk2@127.0.0.1:99999/in",
            "ftp://site:pw-8Hk2@ingest.example.com/in",
        ] {
            let got = settings(&format!("url = \"{url}\"")).expect_err("refused");
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].0, "url");
            assert!(got[0].1.starts_with("must not hold credentials"), "{got:?}");
            assert!(!got[0].1.contains("pw-8Hk2"), "{got:?}");
        }
        for headers in [
            r#"headers = "X-Api-Key: key-8Hk2""#,
            "headers = 7319462850123456789",
        ] {
            let e = HttpsUplinkConfig::from_toml(&format!("url = \"https://x/\"\n{headers}"))
                .expect_err("headers must be a table");
            assert!(!e.contains("8Hk2") && !e.contains("7319"), "{e}");
            assert!(e.contains("a table of header names and values"), "{e}");
        }
    }
}
