//! Durations as pipeline authors write them: `90s`, `5m`, `1h30m`, `250ms`, `2d`, or bare seconds.

use std::time::Duration;

/// Parses a duration. A bare number is seconds; otherwise number-unit pairs are added up.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("missing unit after `{n}`")),
            other => return Err(format!("unknown unit `{other}`")),
        };
        total = total.saturating_add(part);
    }
    if total.is_zero() {
        return Err("a duration must be longer than zero".into());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit `x`"));
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10 minutes").is_err());
    }
}
