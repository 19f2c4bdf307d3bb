//! Admin authentication: `POST /auth/token` checks the configured admin credentials (Argon2
//! hash) and issues an HS256 JWT; admin routes require `Authorization: Bearer <token>`.
//! No token → 401 `AUTH_REQUIRED`; bad or expired token → 401 `AUTH_INVALID_TOKEN`; a valid
//! token without the admin role → 403 `AUTH_FORBIDDEN`.

use super::error::ApiError;
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

pub struct Auth {
    username: String,
    password_hash: Option<String>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the hash or the key.
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("enabled", &self.password_hash.is_some())
            .finish()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// `secret`: the HS256 key (≥ 32 bytes); `password_hash`: Argon2 PHC string, `None`
    /// disables admin login.
    pub fn new(
        username: String,
        password_hash: Option<String>,
        secret: &[u8],
        ttl: Duration,
    ) -> Self {
        Self {
            username,
            password_hash: password_hash.filter(|h| !h.is_empty()),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
        }
    }

    pub fn enabled(&self) -> bool {
        self.password_hash.is_some()
    }

    /// Check credentials; on success a token and its expiry (unix seconds).
    pub fn issue(
        &self,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<(String, u64), ApiError> {
        let Some(hash) = &self.password_hash else {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "AUTH_DISABLED",
                "Admin login is not configured (admin.password_hash)",
            ));
        };
        let parsed = PasswordHash::new(hash).map_err(|e| {
            tracing::error!(error = %e, "admin.password_hash is not a valid PHC string");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "CONFIG_INVALID",
                "Admin credentials are misconfigured",
            )
        })?;
        let ok = username == self.username
            && Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
        if !ok {
            tracing::warn!(username, "admin login refused");
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "AUTH_INVALID_CREDENTIALS",
                "Invalid username or password",
            ));
        }
        Ok(self.sign(username, role, self.ttl))
    }

    /// Sign a token (also used by tests to mint expired tokens).
    pub fn sign(&self, sub: &str, role: Role, ttl: Duration) -> (String, u64) {
        let iat = now();
        let exp = iat + ttl.as_secs();
        let claims = Claims {
            sub: sub.to_string(),
            role,
            iat,
            exp,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, exp)
    }

    /// Sign a token that expired `ago` seconds ago.
    pub fn sign_expired(&self, sub: &str, ago: u64) -> String {
        let t = now().saturating_sub(ago + 3600);
        let claims = Claims {
            sub: sub.to_string(),
            role: Role::Admin,
            iat: t,
            exp: t + 3600,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_exp = true;
        decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| ApiError::invalid_token(&e.to_string()))
    }

    /// The bearer token of a request (header, or `?token=` for browser WebSockets).
    pub fn require_admin(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Claims, ApiError> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let token = match (header, query_token) {
            (Some(h), _) => h
                .strip_prefix("Bearer ")
                .ok_or_else(|| ApiError::invalid_token("expected a Bearer token"))?,
            (None, Some(t)) => t,
            (None, None) => return Err(ApiError::auth_required()),
        };
        let claims = self.verify(token.trim())?;
        if claims.role != Role::Admin {
            return Err(ApiError::forbidden());
        }
        Ok(claims)
    }
}

/// Hash a password as an Argon2id PHC string (for `admin.password_hash`).
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_reject() {
        let hash = hash_password("s3cret");
        let auth = Auth::new(
            "admin".into(),
            Some(hash),
            &[7u8; 32],
            Duration::from_secs(60),
        );
        assert!(auth.issue("admin", "wrong", Role::Admin).is_err());
        assert!(auth.issue("root", "s3cret", Role::Admin).is_err());
        let (token, exp) = auth.issue("admin", "s3cret", Role::Admin).unwrap();
        assert!(exp > now());
        let mut h = HeaderMap::new();
        assert_eq!(
            auth.require_admin(&h, None).unwrap_err().code,
            "AUTH_REQUIRED"
        );
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(auth.require_admin(&h, None).unwrap().sub, "admin");
        h.insert(
            "authorization",
            format!("Bearer {}", auth.sign_expired("admin", 10))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            auth.require_admin(&h, None).unwrap_err().code,
            "AUTH_INVALID_TOKEN"
        );
        let (viewer, _) = auth.sign("bob", Role::Viewer, Duration::from_secs(60));
        h.insert("authorization", format!("Bearer {viewer}").parse().unwrap());
        assert_eq!(
            auth.require_admin(&h, None).unwrap_err().code,
            "AUTH_FORBIDDEN"
        );
        let other = Auth::new("admin".into(), None, &[8u8; 32], Duration::from_secs(60));
        assert_eq!(other.verify(&token).unwrap_err().code, "AUTH_INVALID_TOKEN");
        assert_eq!(
            other
                .issue("admin", "s3cret", Role::Admin)
                .unwrap_err()
                .code,
            "AUTH_DISABLED"
        );
    }
}
