//! Names that go into SQL: identifiers and (optionally qualified) table names, checked at load so that
//! quoting is the only thing left to do when they are put into a statement.

use std::fmt;

use serde::Serialize;
/// A SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters. Reserved words are fine: every
/// identifier is quoted when it is put into SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    pub fn new(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        let ok = s.len() <= 64
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not an identifier (letters, digits and `_`, not starting with a digit, at most 64)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table name, optionally qualified by a database (MySQL) or schema (PostgreSQL): `orders` or `shop.orders`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TableName {
    pub schema: Option<Ident>,
    pub table: Ident,
}

impl TableName {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once('.') {
            Some((schema, table)) => Ok(Self {
                schema: Some(Ident::new(schema)?),
                table: Ident::new(table)?,
            }),
            None => Ok(Self {
                schema: None,
                table: Ident::new(s)?,
            }),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.table),
            None => write!(f, "{}", self.table),
        }
    }
}
