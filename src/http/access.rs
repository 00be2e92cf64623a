//! Who may use the HTTP API: bearer tokens, each with a name and a scope,
//! kept by the daemons only as SHA-256 digests (`api_tokens`).
//!
//! A token is a random secret its holder sends as `Authorization: Bearer
//! <token>`; `sagaflow api-token NAME` makes one and prints the line to
//! configure. Reading (the sagas, their events) needs a `read` or `write`
//! token unless `api_read` is `open`; every write (starts, operators'
//! requests) needs a `write` token, whose name is then the operator the
//! audit records: the name of an operator key (`operator_keys`), which the
//! daemon signs the request with.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest token looked at: a generated token is 64 characters.
pub const MAX_TOKEN_LEN: usize = 256;

/// Shortest token `api-token` makes, and what a secret should have at
/// least: 128 bits of hex.
pub const MIN_TOKEN_LEN: usize = 32;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    /// Reading too.
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// One configured token: `name:scope:sha256-hex`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub scope: Scope,
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken({}:{})", self.name, self.scope.as_str())
    }
}

impl ApiToken {
    /// The configuration entry of `token` for `name`.
    pub fn entry(name: &str, scope: Scope, token: &str) -> String {
        format!("{name}:{}:{}", scope.as_str(), hex(&digest(token)))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.trim().splitn(3, ':');
        let (Some(name), Some(scope), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "`{}` is not an API token entry: they are written name:read:<sha256 hex> or \
                 name:write:<sha256 hex> (`sagaflow api-token NAME` makes one)",
                text.chars().take(64).collect::<String>()
            ));
        };
        crate::protocol::control::check_name("the API token name", name)?;
        let scope = match scope {
            "read" => Scope::Read,
            "write" => Scope::Write,
            other => {
                return Err(format!(
                    "API token `{name}`: the scope is `read` or `write`, not `{other}`"
                ))
            }
        };
        let digest = unhex(hash).ok_or_else(|| {
            format!(
                "API token `{name}`: `{}` is not a SHA-256 digest in hex (64 hex digits); the \
                 daemons keep digests, never tokens",
                hash.chars().take(80).collect::<String>()
            )
        })?;
        Ok(Self {
            name: name.to_owned(),
            scope,
            digest,
        })
    }
}

/// Every token the API accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiTokens(Vec<ApiToken>);

impl ApiTokens {
    /// Reads `entry,entry,...` (empty: no token).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens: Vec<ApiToken> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let token = ApiToken::parse(item)?;
            if tokens.iter().any(|t| t.name == token.name) {
                return Err(format!("API token `{}` is given twice", token.name));
            }
            if tokens.iter().any(|t| t.digest == token.digest) {
                return Err(format!(
                    "API token `{}` has the digest of another token: give each holder its own",
                    token.name
                ));
            }
            tokens.push(token);
        }
        Ok(Self(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ApiToken> {
        self.0.iter()
    }

    /// The token `presented` is, if any. Every digest is compared, in
    /// constant time, so that the time taken tells nothing of which came
    /// close.
    pub fn find(&self, presented: &str) -> Option<&ApiToken> {
        if presented.len() > MAX_TOKEN_LEN {
            return None;
        }
        let digest = digest(presented);
        let mut found = None;
        for token in &self.0 {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found
    }
}

/// A daemon's tokens against its operator keys: each write token's name
/// must be an operator key's, which signs the requests made with it.
pub fn check_writers(
    tokens: &ApiTokens,
    keys: &crate::protocol::control::OperatorKeys,
) -> Result<(), String> {
    for token in tokens.iter().filter(|t| t.scope == Scope::Write) {
        if keys.get(&token.name).is_none() {
            return Err(format!(
                "api_tokens: `{}` is a write token, but operator_keys has no key of that name: \
                 the requests made with it are signed with that key",
                token.name
            ));
        }
    }
    Ok(())
}

/// How reads are allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadAccess {
    /// With a `read` or `write` token.
    #[default]
    Token,
    /// By anyone who reaches the address.
    Open,
}

impl ReadAccess {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "token" => Ok(Self::Token),
            "open" => Ok(Self::Open),
            other => Err(format!("`{other}` is not `token` or `open`")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Open => "open",
        }
    }
}

/// A new random token: 256 bits, as 64 hex digits.
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_found_by_its_digest_only() {
        let token = new_token();
        let tokens = ApiTokens::parse(&format!(
            "{}, {}",
            ApiToken::entry("ops", Scope::Write, &token),
            ApiToken::entry("viewer", Scope::Read, &new_token()),
        ))
        .unwrap();
        let found = tokens.find(&token).unwrap();
        assert_eq!((found.name.as_str(), found.scope), ("ops", Scope::Write));
        assert!(tokens.find(&token[1..]).is_none());
        assert!(tokens.find("").is_none());
        assert!(tokens.find(&"x".repeat(MAX_TOKEN_LEN + 1)).is_none());
        // The configuration shows names and scopes, never digests.
        assert!(!format!("{tokens:?}").contains(&hex(&digest(&token))));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let cases = [
            ("ops", "not an API token entry"),
            ("ops:admin:00", "scope is `read` or `write`"),
            ("ops:read:xyz", "not a SHA-256 digest"),
            (&format!("o p:read:{}", "0".repeat(64)), "letters, digits"),
            (
                &format!("a:read:{},a:write:{}", "0".repeat(64), "1".repeat(64)),
                "given twice",
            ),
            (
                &format!("a:read:{},b:write:{}", "0".repeat(64), "0".repeat(64)),
                "digest of another",
            ),
        ];
        for (text, want) in cases {
            let e = ApiTokens::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(ApiTokens::parse("").unwrap().is_empty());
    }
}
