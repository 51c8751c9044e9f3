//! Parsing and printing of sizes (`64KiB`, `1G`), rates and durations used on the command line.

use std::time::Duration;

/// Parses a size: plain bytes or a binary suffix (`K`, `KiB`, `M`, `MiB`, `G`, `GiB`, `T`,
/// `TiB`, `P`, `PiB`, case-insensitive, optional `B`), the number decimal if the result is a
/// whole number of bytes (`1.5G` is 1610612736 bytes; `0.1G`, 107374182.4 bytes, is
/// refused naming the nearest whole sizes). Anything else is an error naming the accepted
/// forms. (Rules on the value, such as a multiple of 512, are the caller's.)
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || (num.contains('.') && (frac.is_empty() || frac.contains('.'))) {
        return Err(format!(
            "invalid size '{s}': expected a number of bytes with an optional suffix (e.g. 4096, 4K, 64KiB, 1M, 1G, 1T; KB, MB, GB are powers of 1000)"
        ));
    }
    let n: u64 = int
        .parse()
        .map_err(|_| format!("invalid size '{s}': number too large"))?;
    // The coreutils convention (dd, truncate): K M G T P and KiB ... are powers of 1024,
    // KB MB GB TB PB are powers of 1000.
    let unit: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => {
            return Err(format!(
                "invalid size '{s}': unknown suffix '{suffix}' (use K, M, G, T or KiB, MiB, GiB, TiB for powers of 1024; KB, MB, GB, TB for powers of 1000)"
            ))
        }
    };
    let too_big = || format!("invalid size '{s}': does not fit in 64 bits");
    if frac.is_empty() {
        return n.checked_mul(unit).ok_or_else(too_big);
    }
    // A decimal number: exactly, in integers (digits past the 18th would not change a
    // whole byte count of a unit up to 2^50).
    if frac.len() > 18 {
        return Err(format!(
            "invalid size '{s}': too many decimal places (at most 18)"
        ));
    }
    let scale = 10u128.pow(frac.len() as u32);
    let f: u128 = frac
        .parse()
        .map_err(|_| format!("invalid size '{s}': bad decimal part"))?;
    let scaled = (n as u128 * scale + f) * unit as u128;
    let bytes = scaled / scale;
    if scaled % scale != 0 {
        return Err(format!(
            "invalid size '{s}': that is not a whole number of bytes (between {bytes} and {}); give the size in bytes or a smaller unit",
            bytes + 1
        ));
    }
    u64::try_from(bytes).map_err(|_| too_big())
}

/// Parses a rate such as `50M/s`, `50MiB/s` or `50M` (bytes per second).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let v = parse_size(t).map_err(|e| format!("invalid rate '{s}': {e}"))?;
    if v == 0 {
        return Err(format!("invalid rate '{s}': must be greater than zero"));
    }
    Ok(v)
}

/// Parses a duration: plain seconds or a number with `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid duration '{s}': expected e.g. 30s, 500ms, 5m, 2h, 1d or plain seconds")
    })?;
    let secs = match suffix {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration '{s}': unknown unit '{suffix}' (use ms, s, m, h, d)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration '{s}': out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a byte count for people: `0 B`, `4.0 KiB`, `1.5 GiB`.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

pub fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `1 region`, `2 regions`: a count with its noun, singular or plural.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        return format!("1 {noun}");
    }
    // "secondary" -> "secondaries"; "day", "key" keep their y.
    let b = noun.as_bytes();
    match b {
        [.., c, b'y'] if !b"aeiou".contains(c) => format!("{n} {}ies", &noun[..noun.len() - 1]),
        [.., b's' | b'x'] | [.., b'c' | b's', b'h'] => format!("{n} {noun}es"),
        _ => format!("{n} {noun}s"),
    }
}

/// A duration as it would be typed: `500ms`, `2s`, `1.5s`.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// RFC 3339 UTC timestamp for a Unix time, without pulling in a date crate.
pub fn format_time(t: u64) -> String {
    let days = (t / 86400) as i64;
    let rem = t % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_plain_bytes_and_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(plural(2, "secondary"), "2 secondaries");
        assert_eq!(plural(1, "secondary"), "1 secondary");
        assert_eq!(plural(3, "flush"), "3 flushes");
        assert_eq!(plural(0, "region"), "0 regions");
        assert_eq!(plural(2, "day"), "2 days");
        // The coreutils convention: KB, MB, GB are decimal.
        assert_eq!(parse_size("256MB"), Ok(256_000_000));
        assert_eq!(parse_size("4kB"), Ok(4000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1XB").unwrap_err().contains("powers of 1000"));
    }

    #[test]
    fn decimal_sizes_are_taken_when_they_come_to_a_whole_number_of_bytes() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("2.25M"), Ok(2_359_296));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1.0"), Ok(1));
        // Not a whole number of bytes: refused, naming the whole sizes around it.
        let e = parse_size("0.1G").unwrap_err();
        assert!(
            e.contains("not a whole number of bytes")
                && e.contains("107374182")
                && e.contains("107374183"),
            "{e}"
        );
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("16777216.5T").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn sizes_reject_garbage_negative_fractions_and_overflow() {
        for bad in [
            "",
            "x",
            "-1",
            "1.3K",
            ".5G",
            "1.G",
            "1.2.3G",
            "10Q",
            "1 G G",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_and_rates_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_rate("50M/s").unwrap(), 50 << 20);
        assert!(parse_rate("0/s").is_err());
    }

    #[test]
    fn times_format_as_rfc3339_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn counts_take_the_singular_only_for_one() {
        assert_eq!(plural(0, "region"), "0 regions");
        assert_eq!(plural(1, "region"), "1 region");
        assert_eq!(plural(2, "region"), "2 regions");
    }

    #[test]
    fn durations_format_as_they_are_typed() {
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn sizes_format_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(4096), "4.0 KiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }
}
