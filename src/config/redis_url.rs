//! Redis URLs hold passwords: this is the one place that knows where, so
//! that nothing prints them. [`redacted`] masks them for every message,
//! [`RedisUrl`] carries one through the command line without `Debug`
//! showing it, and [`client`] opens one with an error that shows it masked.

use std::fmt;

/// What stands for a secret of a Redis URL in everything printed.
pub const MASK: &str = "***";

/// Query parameters of a Redis URL shown as they are: redis-rs reads them,
/// and they hold no secret. Every other parameter's value is masked: `pass`
/// (the password of a Unix socket URL) and anything else (`password`,
/// `token`...), since a parameter redis-rs ignores may still be a secret
/// someone wrote there.
const PLAIN_QUERY_KEYS: [&str; 3] = ["db", "protocol", "user"];

/// A Redis URL fit for logs, messages and `sagaflow config`: every secret
/// it may hold replaced by [`MASK`].
///
/// It reads the URL as redis-rs 1.8 does (`redis`, `rediss`, `valkey`,
/// `valkeys`, `redis+unix`, `valkey+unix`, `unix`): the password of the
/// userinfo (however percent-encoded) is masked, and so is a user name
/// without a password (more often a password missing its colon than a
/// user); every query parameter but `db`, `protocol` and `user` has its
/// value masked (`?pass=` carries the password of a socket URL); a fragment
/// other than `#insecure` is masked. A URL that does not parse shows its
/// scheme alone: where its secret would be cannot be told.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if !parsed.cannot_be_a_base() => {
            masked(parsed).unwrap_or_else(|| scheme_only(url))
        }
        _ => scheme_only(url),
    }
}

fn masked(mut url: url::Url) -> Option<String> {
    if url.password().is_some() {
        url.set_password(Some(MASK)).ok()?;
    } else if !url.username().is_empty() {
        url.set_username(MASK).ok()?;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut query = url.query_pairs_mut();
        query.clear();
        for (key, value) in &pairs {
            if PLAIN_QUERY_KEYS.contains(&key.as_str()) {
                query.append_pair(key, value);
            } else if value.is_empty() {
                // A bare word may be the secret itself.
                query.append_key_only(MASK);
            } else {
                query.append_pair(key, MASK);
            }
        }
    }
    if url.fragment().is_some_and(|f| f != "insecure") {
        url.set_fragment(Some(MASK));
    }
    Some(url.to_string())
}

/// `<scheme>://***`, or [`MASK`] alone when there is no scheme to show.
fn scheme_only(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once(':') else {
        return MASK.to_owned();
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    match (is_scheme, rest.starts_with("//")) {
        (false, _) => MASK.to_owned(),
        (true, true) => format!("{scheme}://{MASK}"),
        (true, false) => format!("{scheme}:{MASK}"),
    }
}

/// A Redis URL given on the command line or in the environment: `Debug`
/// and `Display` show it [`redacted`]; [`RedisUrl::expose`] gives it whole,
/// to connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL with its password, for opening a client and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", redacted(&self.0))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(&self.0))
    }
}

/// The schemes redis-rs 1.8 reads.
const SCHEMES: [&str; 7] = [
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "unix",
    "redis+unix",
    "valkey+unix",
];

/// A URL that cannot be used, shown [`redacted`], and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL `{shown}`: {reason}")]
pub struct InvalidRedisUrl {
    pub shown: String,
    pub reason: String,
}

/// A client of the Redis at `url` (nothing is connected yet).
pub fn client(url: &str) -> Result<redis::Client, InvalidRedisUrl> {
    redis::Client::open(url).map_err(|e| {
        let reason = match url::Url::parse(url) {
            Err(e) => format!("{e} (the URL does not parse)"),
            Ok(u) if !SCHEMES.contains(&u.scheme()) => format!(
                "the scheme `{}` is none of {}",
                u.scheme(),
                SCHEMES.join(", ")
            ),
            // redis-rs's reasons name a part (a database, a host, a
            // path), never quote a password.
            Ok(_) => e.to_string(),
        };
        InvalidRedisUrl {
            shown: redacted(url),
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("rediss://:s3cret@host:6380/0"),
            "rediss://:***@host:6380/0"
        );
        assert_eq!(redacted("redis://app:pw@host"), "redis://app:***@host");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn every_url_form_of_redis_rs_is_masked() {
        for (url, shown) in [
            ("redis://:s3cret@h:1", "redis://:***@h:1"),
            ("valkey://app:s3cret@h/2", "valkey://app:***@h/2"),
            ("valkeys://:s3cret@h#insecure", "valkeys://:***@h#insecure"),
            ("rediss://:s3cret@h/#insecure", "rediss://:***@h/#insecure"),
            ("rediss://h/#s3cret", "rediss://h/#***"),
            ("redis://app:s3%40cret@h", "redis://app:***@h"),
            ("redis://app:s3@cret@h", "redis://app:***@h"),
            ("redis://s3cret@h", "redis://***@h"),
            ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
            ("unix:///tmp/r.sock?db=2", "unix:///tmp/r.sock?db=2"),
            (
                "unix:///tmp/r.sock?pass=s3cret",
                "unix:///tmp/r.sock?pass=***",
            ),
            (
                "redis+unix:///tmp/r.sock?user=app&pass=s3cret&db=1&protocol=3",
                "redis+unix:///tmp/r.sock?user=app&pass=***&db=1&protocol=3",
            ),
            (
                "valkey+unix:///v.sock?pass=s3cret",
                "valkey+unix:///v.sock?pass=***",
            ),
            (
                "unix:///r.sock?password=s3cret",
                "unix:///r.sock?password=***",
            ),
            ("unix:///r.sock?PASS=s3cret", "unix:///r.sock?PASS=***"),
            ("unix:///r.sock?pa%73s=s3%63ret", "unix:///r.sock?pass=***"),
            ("unix:///r.sock?s3cret", "unix:///r.sock?***"),
            (
                "unix://:s3cret@localhost/r.sock",
                "unix://:***@localhost/r.sock",
            ),
            ("redis://h/?token=s3cret", "redis://h/?token=***"),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    #[test]
    fn a_url_that_does_not_parse_shows_no_more_than_its_scheme() {
        for (url, shown) in [
            ("redis://:s3cret@h:port", "redis://***"),
            ("redis://:s3/c?r#et@h:6379", "redis://***"),
            ("redis:app:s3cret@h", "redis:***"),
            ("s3cret", "***"),
            ("", "***"),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    #[test]
    fn a_url_on_the_command_line_prints_masked() {
        let url: RedisUrl = "redis://app:s3cret@h".parse().unwrap();
        assert_eq!(url.to_string(), "redis://app:***@h");
        assert_eq!(format!("{url:?}"), r#"RedisUrl("redis://app:***@h")"#);
        assert_eq!(url.expose(), "redis://app:s3cret@h");
    }

    #[test]
    fn an_unusable_url_is_refused_masked_with_the_reason() {
        for (url, reason) in [
            ("redis://:s3cret@h:port", "invalid port number"),
            ("http://:s3cret@h", "the scheme `http` is none of redis"),
            ("unix:///r.sock?pass=s3cret&db=first", "database"),
            ("redis://:s3cret@0.0.0.0:1", "wildcard"),
        ] {
            let e = client(url).unwrap_err().to_string();
            assert!(e.contains(reason), "{url}: {e}");
            assert!(e.starts_with("invalid Redis URL `"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(client("unix:///r.sock?pass=s3cret").is_ok());
    }
}
