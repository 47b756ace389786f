//! The civil registry (RNIPP) check: the record of a person, the lookup
//! key, the outcome of comparing a pivot identity with the record, and the
//! CSV import format (`relais registry import`).

use super::citizen::*;
use serde_json::{Map, Value};

/// Life status recorded in the civil registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryStatus {
    /// The person is alive.
    Alive,
    /// The person is recorded as deceased.
    Deceased,
}

/// Result of checking a presented identity against the civil registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOutcome {
    /// The identity is in the registry and the person is alive.
    Found,
    /// No record matches.
    NotFound,
    /// The identity is in the registry and the person is deceased.
    Deceased,
    /// A record was found but the named claim differs.
    Mismatch(&'static str),
    /// The registry could not be queried (set by the caller).
    Unavailable(String),
}

/// One civil registry entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRecord {
    /// Civil-status data of the entry.
    pub identity: PivotIdentity,
    /// Life status of the person.
    pub status: RegistryStatus,
}

/// Registry key without the given names: normalised family name, birthdate,
/// gender, birthcountry and birthplace (`""` when born abroad).
///
/// Two identities with the same lookup key but different
/// [`PivotIdentity::identity_key`] differ only by their given names.
#[must_use]
pub fn registry_lookup_key(id: &PivotIdentity) -> String {
    [
        "v1-registry",
        &normalise_name(&id.family_name),
        &id.birthdate,
        id.gender.as_claim(),
        &id.birthcountry,
        id.key_birthplace(),
    ]
    .join("\n")
}

/// Decide the registry outcome for the record the caller found for
/// `presented` (by `identity_key()`, or failing that by
/// [`registry_lookup_key`]).
///
/// `None` gives `NotFound`. A record whose normalised fields all match gives
/// `Deceased` or `Found` from its status. Otherwise the first differing claim
/// is reported as `Mismatch`, checked in the order `family_name`, `birthdate`,
/// `gender`, `birthcountry`, `birthplace`, `given_name`; so a record found by lookup
/// key whose given names differ gives `Mismatch("given_name")`.
#[must_use]
pub fn registry_outcome(
    presented: &PivotIdentity,
    record: Option<&RegistryRecord>,
) -> RegistryOutcome {
    let Some(record) = record else {
        return RegistryOutcome::NotFound;
    };
    let found = &record.identity;
    let checks: [(&'static str, bool); 6] = [
        (
            "family_name",
            normalise_name(&presented.family_name) == normalise_name(&found.family_name),
        ),
        ("birthdate", presented.birthdate == found.birthdate),
        ("gender", presented.gender == found.gender),
        ("birthcountry", presented.birthcountry == found.birthcountry),
        (
            "birthplace",
            presented.key_birthplace() == found.key_birthplace(),
        ),
        (
            "given_name",
            normalise_name(&presented.given_name) == normalise_name(&found.given_name),
        ),
    ];
    if let Some((claim, _)) = checks.into_iter().find(|(_, same)| !same) {
        return RegistryOutcome::Mismatch(claim);
    }
    match record.status {
        RegistryStatus::Alive => RegistryOutcome::Found,
        RegistryStatus::Deceased => RegistryOutcome::Deceased,
    }
}

/// Columns of the registry CSV, in the documented header order.
const REGISTRY_COLUMNS: [&str; 7] = [
    "given_name",
    "family_name",
    "birthdate",
    "gender",
    "birthplace",
    "birthcountry",
    "status",
];

/// One CSV record: the 1-based line it starts on, its fields, and whether it
/// is a blank line (one unquoted, whitespace-only field).
struct CsvRecord {
    line: usize,
    fields: Vec<String>,
    blank: bool,
}

/// RFC 4180 reader: comma-separated, `"`-quoted fields with `""` for a quote,
/// LF or CRLF line ends, line breaks allowed inside quoted fields.
fn read_csv(text: &str) -> Result<Vec<CsvRecord>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut records = Vec::new();
    while chars.peek().is_some() {
        let start_line = line;
        let mut fields = Vec::new();
        let mut any_quoted = false;
        loop {
            let mut field = String::new();
            let quoted = chars.peek() == Some(&'"');
            if quoted {
                any_quoted = true;
                let field_line = line;
                chars.next();
                loop {
                    match chars.next() {
                        None => {
                            return Err(format!("line {field_line}: unterminated quoted field"))
                        }
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            field.push(c);
                        }
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    match c {
                        ',' | '\n' | '\r' => break,
                        '"' => return Err(format!("line {line}: quote inside unquoted field")),
                        _ => {
                            field.push(c);
                            chars.next();
                        }
                    }
                }
            }
            fields.push(field);
            match chars.next() {
                None => break,
                Some(',') => {} // next field of the same record
                Some('\n') => {
                    line += 1;
                    break;
                }
                Some('\r') if chars.peek() == Some(&'\n') => {
                    chars.next();
                    line += 1;
                    break;
                }
                Some('\r') => {
                    return Err(format!("line {line}: carriage return without line feed"))
                }
                Some(_) => {
                    return Err(format!(
                        "line {line}: unexpected character after closing quote"
                    ))
                }
            }
        }
        let blank = !any_quoted && matches!(fields.as_slice(), [only] if only.trim().is_empty());
        records.push(CsvRecord {
            line: start_line,
            fields,
            blank,
        });
    }
    Ok(records)
}

/// Parse registry CSV.
///
/// Header line required:
/// `given_name,family_name,birthdate,gender,birthplace,birthcountry,status`
/// (exact names; columns may come in any order, each exactly once).
/// `status` is `alive` or `deceased`; `birthplace` may be empty (born
/// abroad). Fields may be double-quoted (RFC 4180, quotes doubled inside);
/// an empty field counts as an absent claim. Empty lines are skipped. Each
/// row is validated with the same rules as [`PivotIdentity::from_claims`].
///
/// # Errors
///
/// A message starting with `line N:` (the 1-based line where the faulty
/// record starts) for malformed CSV, a bad header, a wrong field count, an
/// invalid status or a row that fails validation.
pub fn parse_registry_csv(text: &str) -> Result<Vec<RegistryRecord>, String> {
    let records = read_csv(text)?;
    let mut rows = records.into_iter().filter(|r| !r.blank);
    let header = rows
        .next()
        .ok_or_else(|| "line 1: missing header line".to_owned())?;
    let mut columns: Vec<&'static str> = Vec::with_capacity(header.fields.len());
    for name in &header.fields {
        let name = name.trim();
        let column = REGISTRY_COLUMNS
            .iter()
            .find(|c| **c == name)
            .ok_or_else(|| format!("line {}: unknown column {name:?}", header.line))?;
        if columns.contains(column) {
            return Err(format!("line {}: duplicate column {name}", header.line));
        }
        columns.push(column);
    }
    if let Some(missing) = REGISTRY_COLUMNS.iter().find(|c| !columns.contains(c)) {
        return Err(format!("line {}: missing column {missing}", header.line));
    }

    let mut out = Vec::new();
    for row in rows {
        let line = row.line;
        if row.fields.len() != columns.len() {
            return Err(format!(
                "line {line}: expected {} fields, found {}",
                columns.len(),
                row.fields.len()
            ));
        }
        let mut claims = Map::new();
        let mut status = None;
        for (column, value) in columns.iter().zip(row.fields) {
            if *column == "status" {
                status = Some(value);
            } else if !value.is_empty() {
                claims.insert((*column).to_owned(), Value::String(value));
            }
        }
        let status = match status.as_deref() {
            Some("alive") => RegistryStatus::Alive,
            Some("deceased") => RegistryStatus::Deceased,
            None | Some("") => return Err(format!("line {line}: missing status")),
            Some(other) => {
                return Err(format!(
                    "line {line}: invalid status {other:?}: must be alive or deceased"
                ))
            }
        };
        let identity =
            PivotIdentity::from_claims(&claims).map_err(|e| format!("line {line}: {e}"))?;
        out.push(RegistryRecord { identity, status });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::citizen::tests::*;
    use serde_json::json;

    const HEADER: &str = "given_name,family_name,birthdate,gender,birthplace,birthcountry,status";

    #[test]
    fn parse_registry_csv_basic() {
        let text = format!(
            "{HEADER}\n\
             Angela Claire Louise,DUBOIS,1962-08-24,female,75107,99100,alive\n\
             \n\
             \"Jean-Pierre\",\"D'Artagnan, dit \"\"le Gascon\"\"\",1970-01-31,male,,99134,deceased\n"
        );
        let records = parse_registry_csv(&text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].identity,
            ok(&without(
                without(french_claims(), "email"),
                "preferred_username"
            ))
        );
        assert_eq!(records[0].status, RegistryStatus::Alive);
        assert_eq!(records[1].identity.given_name, "Jean-Pierre");
        assert_eq!(
            records[1].identity.family_name,
            "D'Artagnan, dit \"le Gascon\""
        );
        assert_eq!(records[1].identity.birthplace, None);
        assert_eq!(records[1].identity.birthcountry, "99134");
        assert_eq!(records[1].status, RegistryStatus::Deceased);
    }

    #[test]
    fn parse_registry_csv_crlf_bom_and_column_order() {
        let text =
            "\u{feff}status,birthcountry,birthplace,gender,birthdate,family_name,given_name\r\n\
                    alive,99100,2A004,male,2000-02-29,Colonna,Pasquale\r\n\r\n";
        let records = parse_registry_csv(text).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].identity.given_name, "Pasquale");
        assert_eq!(records[0].identity.birthplace.as_deref(), Some("2A004"));
        assert_eq!(records[0].status, RegistryStatus::Alive);
    }

    #[test]
    fn parse_registry_csv_header_only_and_empty() {
        assert_eq!(parse_registry_csv(HEADER).unwrap(), vec![]);
        assert_eq!(
            parse_registry_csv(&format!("\n\n{HEADER}\n\n")).unwrap(),
            vec![]
        );
        assert_eq!(
            parse_registry_csv("").unwrap_err(),
            "line 1: missing header line"
        );
        assert_eq!(
            parse_registry_csv("\n  \n").unwrap_err(),
            "line 1: missing header line"
        );
    }

    #[test]
    fn parse_registry_csv_header_errors() {
        assert_eq!(
            parse_registry_csv("given_name,family_name,birthdate,gender,birthplace,birthcountry")
                .unwrap_err(),
            "line 1: missing column status"
        );
        assert_eq!(
            parse_registry_csv(&format!("{HEADER},nickname")).unwrap_err(),
            "line 1: unknown column \"nickname\""
        );
        assert_eq!(
            parse_registry_csv(&format!("\n{HEADER},status")).unwrap_err(),
            "line 2: duplicate column status"
        );
        // Data without a header is rejected.
        assert_eq!(
            parse_registry_csv("Jean,Martin,1970-01-01,male,75107,99100,alive").unwrap_err(),
            "line 1: unknown column \"Jean\""
        );
    }

    #[test]
    fn parse_registry_csv_reports_line_numbers() {
        let good = "Jean,Martin,1970-01-01,male,75107,99100,alive";
        let cases = [
            (
                format!("{HEADER}\n{good}\n\nJean,Martin,2023-02-29,male,75107,99100,alive\n"),
                "line 4: invalid claim birthdate: must be a valid date in YYYY-MM-DD format",
            ),
            (
                format!("{HEADER}\n{good}\nJean,Martin,1970-01-01,x,75107,99100,alive"),
                "line 3: invalid claim gender: must be male or female",
            ),
            (
                format!("{HEADER}\nJean,Martin,1970-01-01,male,,99100,alive"),
                "line 2: missing claim birthplace",
            ),
            (
                format!("{HEADER}\n,Martin,1970-01-01,male,75107,99100,alive"),
                "line 2: missing claim given_name",
            ),
            (
                format!("{HEADER}\n{good}\nJean,Martin,1970-01-01,male,75107,99100"),
                "line 3: expected 7 fields, found 6",
            ),
            (
                format!("{HEADER}\n{good},extra"),
                "line 2: expected 7 fields, found 8",
            ),
            (
                format!("{HEADER}\nJean,Martin,1970-01-01,male,75107,99100,dead"),
                "line 2: invalid status \"dead\": must be alive or deceased",
            ),
            (
                format!("{HEADER}\nJean,Martin,1970-01-01,male,75107,99100,"),
                "line 2: missing status",
            ),
            (
                format!("{HEADER}\n{good}\n\"Jean,Martin,1970-01-01,male,75107,99100,alive\n"),
                "line 3: unterminated quoted field",
            ),
            (
                format!("{HEADER}\nJe\"an,Martin,1970-01-01,male,75107,99100,alive"),
                "line 2: quote inside unquoted field",
            ),
            (
                format!("{HEADER}\n\"Jean\"x,Martin,1970-01-01,male,75107,99100,alive"),
                "line 2: unexpected character after closing quote",
            ),
            (
                format!("{HEADER}\rJean"),
                "line 1: carriage return without line feed",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_registry_csv(&text).unwrap_err(), expected, "{text:?}");
        }
    }

    #[test]
    fn parse_registry_csv_multiline_quoted_field_keeps_line_count() {
        // A quoted field spanning lines is read (then rejected by validation,
        // names cannot hold control characters) and line numbers stay right.
        let text = format!(
            "{HEADER}\n\"Jean\nPierre\",Martin,1970-01-01,male,75107,99100,alive\n\
             Jean,Martin,1970-01-01,x,75107,99100,alive\n"
        );
        assert_eq!(
            parse_registry_csv(&text).unwrap_err(),
            "line 2: invalid claim given_name: must not contain control characters"
        );
        let text = format!("{HEADER}\n\"Jean\",\"Mar\ntin\",1970-01-01,male,75107,99100,alive\n");
        assert!(parse_registry_csv(&text)
            .unwrap_err()
            .starts_with("line 2: "));
        let read = read_csv("a,\"b\nc\"\nd,e\n").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].fields, ["a", "b\nc"]);
        assert_eq!(read[1].line, 3);
        assert_eq!(read[1].fields, ["d", "e"]);
    }

    // ---- registry outcome ----

    fn record(claims: &Map<String, Value>, status: RegistryStatus) -> RegistryRecord {
        RegistryRecord {
            identity: ok(claims),
            status,
        }
    }

    #[test]
    fn registry_outcome_found_and_deceased() {
        let presented = ok(&french_claims());
        // Registry spelling differs only by case/accents/separators.
        let reg = with(
            french_claims(),
            "given_name",
            json!("angela-claire  louise"),
        );
        let reg = with(reg, "family_name", json!("Dubois"));
        let alive = record(&reg, RegistryStatus::Alive);
        assert_eq!(alive.identity.identity_key(), presented.identity_key());
        assert_eq!(
            registry_outcome(&presented, Some(&alive)),
            RegistryOutcome::Found
        );
        let dead = record(&reg, RegistryStatus::Deceased);
        assert_eq!(
            registry_outcome(&presented, Some(&dead)),
            RegistryOutcome::Deceased
        );
    }

    #[test]
    fn registry_outcome_not_found() {
        assert_eq!(
            registry_outcome(&ok(&french_claims()), None),
            RegistryOutcome::NotFound
        );
    }

    #[test]
    fn registry_outcome_given_name_mismatch_via_lookup_key() {
        let presented = ok(&french_claims());
        let reg = record(
            &with(french_claims(), "given_name", json!("Angela")),
            RegistryStatus::Deceased,
        );
        assert_ne!(reg.identity.identity_key(), presented.identity_key());
        assert_eq!(
            registry_lookup_key(&reg.identity),
            registry_lookup_key(&presented)
        );
        assert_eq!(
            registry_outcome(&presented, Some(&reg)),
            RegistryOutcome::Mismatch("given_name")
        );
    }

    #[test]
    fn registry_outcome_reports_first_differing_claim() {
        let presented = ok(&french_claims());
        let cases = [
            (
                with(french_claims(), "family_name", json!("Durand")),
                "family_name",
            ),
            (
                with(french_claims(), "birthdate", json!("1962-08-25")),
                "birthdate",
            ),
            (with(french_claims(), "gender", json!("male")), "gender"),
            (
                with(
                    without(french_claims(), "birthplace"),
                    "birthcountry",
                    json!("99134"),
                ),
                "birthcountry",
            ),
            (
                with(french_claims(), "birthplace", json!("75108")),
                "birthplace",
            ),
        ];
        for (claims, claim) in cases {
            let reg = record(&claims, RegistryStatus::Alive);
            assert_eq!(
                registry_outcome(&presented, Some(&reg)),
                RegistryOutcome::Mismatch(claim)
            );
            assert_ne!(
                registry_lookup_key(&reg.identity),
                registry_lookup_key(&presented)
            );
        }
    }

    #[test]
    fn registry_lookup_key_ignores_given_names_and_optionals() {
        let a = ok(&french_claims());
        let b = ok(&with(
            without(french_claims(), "email"),
            "given_name",
            json!("Someone Else"),
        ));
        assert_eq!(registry_lookup_key(&a), registry_lookup_key(&b));
        assert_eq!(
            registry_lookup_key(&a),
            "v1-registry\nDUBOIS\n1962-08-24\nfemale\n99100\n75107"
        );
        assert_ne!(registry_lookup_key(&a), a.identity_key());
    }

    #[test]
    fn registry_lookup_flow_with_parsed_csv() {
        use std::collections::HashMap;
        let text = format!(
            "{HEADER}\n\
             Angela Claire Louise,DUBOIS,1962-08-24,female,75107,99100,alive\n\
             Paul,Durand,1930-05-01,male,,99134,deceased\n"
        );
        let records = parse_registry_csv(&text).unwrap();
        let by_key: HashMap<String, &RegistryRecord> = records
            .iter()
            .map(|r| (r.identity.identity_key(), r))
            .collect();
        let by_lookup: HashMap<String, &RegistryRecord> = records
            .iter()
            .map(|r| (registry_lookup_key(&r.identity), r))
            .collect();
        let check = |p: &PivotIdentity| {
            let rec = by_key
                .get(&p.identity_key())
                .or_else(|| by_lookup.get(&registry_lookup_key(p)))
                .copied();
            registry_outcome(p, rec)
        };
        assert_eq!(check(&ok(&french_claims())), RegistryOutcome::Found);
        assert_eq!(
            check(&ok(&with(french_claims(), "given_name", json!("Angèle")))),
            RegistryOutcome::Mismatch("given_name")
        );
        let paul = ok(&obj(json!({
            "given_name": "paul", "family_name": "DURAND", "birthdate": "1930-05-01",
            "gender": "male", "birthcountry": "99134",
        })));
        assert_eq!(check(&paul), RegistryOutcome::Deceased);
        assert_eq!(
            check(&ok(&with(
                french_claims(),
                "birthdate",
                json!("1962-08-23")
            ))),
            RegistryOutcome::NotFound
        );
    }
}
