//! Page tokens for ListComponents and ListPipelines. A token is the hex of the last id
//! (or pipeline name) a page returned, so the next page starts strictly after it:
//! concurrent inserts and removals never make a listing skip or repeat an entry that
//! stayed. Opaque to clients.

use crate::{Error, Result, model::ComponentId};

/// Page size when the request leaves it 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size; bigger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 1000;

const TOKEN_FIELD: &str = "page.page_token";

/// The page size to use for a requested one.
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The token that continues after `last_id`.
pub fn encode(last_id: &str) -> String {
    hex::encode(last_id)
}

/// The id a token continues after; `None` for the first page.
pub fn decode(token: &str) -> Result<Option<ComponentId>> {
    decode_with(token, ComponentId::parse)
}

/// The key a token continues after, checked by `parse` (given the field and the text);
/// `None` for the first page.
pub fn decode_with<T>(
    token: &str,
    parse: impl FnOnce(&str, &str) -> Result<T>,
) -> Result<Option<T>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::invalid(
            TOKEN_FIELD,
            "is not a token this server issued: pass next_page_token from the previous page, or empty for the first",
        )
    };
    let bytes = hex::decode(token).map_err(|_| invalid())?;
    let id = String::from_utf8(bytes).map_err(|_| invalid())?;
    parse(TOKEN_FIELD, &id).map(Some).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let id = decode(&encode("proc-042")).unwrap().unwrap();
        assert_eq!(id.as_str(), "proc-042");
        assert!(decode("").unwrap().is_none());
    }

    #[test]
    fn garbage_tokens_name_the_field() {
        for bad in [
            "zz",
            "abc",
            &hex::encode("has space"),
            &hex::encode([0xff, 0xfe]),
        ] {
            let err = decode(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("page.page_token: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(5000), MAX_PAGE_SIZE);
    }
}
