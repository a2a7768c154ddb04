//! `${VAR}` expansion inside string values, after TOML parsing, so a variable's content can never change
//! the structure of the file. An unset variable is an error naming it and the key.

/// Replace `${VAR}` in every string value. An unset variable is an error naming it and the key (`at`: the
/// key path of `v`, "" for a whole document). Public for the other TOML files (bitmig-rollover's config).
pub fn expand_env(
    v: &mut toml::Value,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand_str(s, env).map_err(|e| format!("`{at}`: {e}"))?;
        }
        toml::Value::Array(items) => {
            for item in items {
                expand_env(item, at, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                expand_env(item, &path, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`".to_owned())?;
        let var = &after[..end];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{var}}}` is not a variable name"));
        }
        let value = env(var).ok_or_else(|| format!("environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
