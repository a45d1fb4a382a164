//! Reading the page's form posts: fields by name, trimmed, and the few
//! typed fields (versions, GiB, reset policy) turned into service values
//! with errors that name the field.

use std::collections::HashMap;

use axum::Form;
use axum::http::{HeaderMap, header};
use khoi_admin::ServiceError;
use khoi_state::ResetPolicy;

/// Form posts are small; uploads go through the API with a header token.
pub const FORM_LIMIT: usize = 256 * 1024;

pub type FormMap = Form<HashMap<String, String>>;

pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

pub fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A field's trimmed value, or "" when it was not sent.
pub fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> &'a str {
    f.get(name).map_or("", |s| s.trim())
}

/// A field's value as sent (passwords keep their spaces).
pub fn raw<'a>(f: &'a HashMap<String, String>, name: &str) -> &'a str {
    f.get(name).map_or("", String::as_str)
}

pub fn invalid(field: &str, reason: &str) -> ServiceError {
    ServiceError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub fn parse_opt_u32(f: &HashMap<String, String>, name: &str) -> Result<Option<u32>, ServiceError> {
    let v = field(f, name);
    if v.is_empty() || v == "latest" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| invalid(name, "must be a version number or empty for the latest"))
}

pub fn parse_gib(f: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ServiceError> {
    let v = field(f, name);
    if v.is_empty() {
        return Ok(None);
    }
    let n: u64 = v
        .parse()
        .map_err(|_| invalid(name, "must be a whole number of GiB (0 = server default)"))?;
    n.checked_mul(1 << 30)
        .map(Some)
        .ok_or_else(|| invalid(name, "too large"))
}

/// A required size with units (`64GiB`), for a new disk.
pub fn parse_size(f: &HashMap<String, String>, name: &str) -> Result<u64, ServiceError> {
    khoi_admin::capture::parse_size(field(f, name)).map_err(|e| invalid(name, &e))
}

pub fn parse_policy(f: &HashMap<String, String>) -> Result<Option<ResetPolicy>, ServiceError> {
    let v = field(f, "policy");
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|e: String| invalid("policy", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_name_the_field() {
        let f: HashMap<String, String> = [("version", " 3 "), ("quota_gib", "x"), ("policy", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(parse_opt_u32(&f, "version").ok(), Some(Some(3)));
        assert!(matches!(
            parse_gib(&f, "quota_gib"),
            Err(ServiceError::Invalid { field, .. }) if field == "quota_gib"
        ));
        assert_eq!(parse_policy(&f).ok(), Some(None));
        assert_eq!(field(&f, "missing"), "");
        assert_eq!(
            form_urlencoded_field(b"a=1&_csrf=t%20k", "_csrf").as_deref(),
            Some("t k")
        );
    }
}
