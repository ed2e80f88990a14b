//! Memory sizes as people write them ("64MiB", "1GiB", "512KiB", "100MB", or
//! a number of bytes), read by one parser wherever Weir accepts them: the
//! SDK's `#[task(memory = "...")]` at compile time and the host's
//! `--task-memory` and deployment `limits.memory`.
//!
//! A leaf with no dependencies, so that depending on it ties neither the host
//! to the guest SDK nor the SDK to the host (see ARCHITECTURE.md).

use std::fmt;

/// Why a text is not a memory size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySizeError {
    /// Not a whole number followed by a known unit.
    Malformed { text: String },
    /// More bytes than fit in 64 bits.
    TooLarge { text: String },
}

impl fmt::Display for MemorySizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemorySizeError::Malformed { text } => write!(
                f,
                "'{text}' is not a memory size; use e.g. 64MiB, 1GiB or a number of bytes"
            ),
            MemorySizeError::TooLarge { text } => write!(
                f,
                "'{text}' is too large a memory size (the most is 16 EiB); use e.g. 64MiB or 1GiB"
            ),
        }
    }
}

impl std::error::Error for MemorySizeError {}

/// "64MiB", "1 GiB", "512KiB", "100MB", "4096" → bytes.
pub fn parse_memory_size(text: &str) -> Result<u64, MemorySizeError> {
    let text = text.trim();
    let digits = text.chars().take_while(|c| c.is_ascii_digit()).count();
    let (number, unit) = text.split_at(digits);
    let malformed = || MemorySizeError::Malformed {
        text: text.to_string(),
    };
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(malformed()),
    };
    let too_large = || MemorySizeError::TooLarge {
        text: text.to_string(),
    };
    if number.is_empty() {
        return Err(malformed());
    }
    let number: u64 = number.parse().map_err(|_| too_large())?;
    number.checked_mul(factor).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(parse_memory_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_memory_size(" 1 GiB "), Ok(1 << 30));
        assert_eq!(parse_memory_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_memory_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_memory_size("2kB"), Ok(2_000));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert_eq!(parse_memory_size("7B"), Ok(7));
    }

    #[test]
    fn what_is_not_a_size_is_refused() {
        for text in [
            "lots",
            "",
            "MiB",
            "-1MiB",
            "1.5GiB",
            "64mib",
            "64 MiB extra",
            "0x10",
        ] {
            assert_eq!(
                parse_memory_size(text),
                Err(MemorySizeError::Malformed {
                    text: text.trim().to_string()
                }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn sizes_past_64_bits_are_refused_not_wrapped() {
        for text in ["99999999999GiB", "18446744073709551616", "17179869184GiB"] {
            assert!(
                matches!(
                    parse_memory_size(text),
                    Err(MemorySizeError::TooLarge { .. })
                ),
                "{text:?}"
            );
        }
        assert_eq!(
            parse_memory_size("17179869183GiB"),
            Ok(17_179_869_183 << 30)
        );
    }

    #[test]
    fn errors_say_what_to_write() {
        let message = parse_memory_size("lots").unwrap_err().to_string();
        assert!(
            message.contains("'lots'") && message.contains("64MiB"),
            "{message}"
        );
    }
}
