//! Cutting, describing and putting back together transfers, without mail.

use super::*;

fn info_for(text: &str, count: u32) -> PartInfo {
    PartInfo {
        transfer: "0123456789abcdef0123456789abcdef".into(),
        index: 1,
        count,
        size: text.len() as u64,
        hash: hash(text.as_bytes()),
        of: "<whole@example.test>".into(),
    }
}

fn numbered(pieces: &[&[u8]]) -> Vec<(u32, Vec<u8>)> {
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32 + 1, p.to_vec()))
        .collect()
}

#[test]
fn split_cuts_into_pieces_of_at_most_max_and_loses_nothing() {
    // Bytes of the compact form (any value): a cut inside a character of a string in it is
    // fine, as the parts are put together before anything is read.
    let body = "ab€cdé🎉fg".repeat(37).into_bytes();
    for max in [1, 4, 5, 7, 16, 100, 10_000] {
        let pieces = split(&body, max);
        assert_eq!(pieces.concat(), body, "max {max}");
        assert!(
            pieces.iter().all(|p| !p.is_empty() && p.len() <= max),
            "max {max}"
        );
    }
    assert!(split(b"", 10).is_empty());
    assert_eq!(split(b"abcdef", 4), vec![&b"abcd"[..], &b"ef"[..]]);
}

#[test]
fn assemble_takes_parts_in_any_order_and_checks_the_hash() {
    let text = "{\"minisync\":\"changes\",\"x\":\"".to_string() + &"é".repeat(500) + "\"}";
    let pieces = split(text.as_bytes(), 100);
    let info = info_for(&text, pieces.len() as u32);
    let mut parts = numbered(&pieces);
    parts.reverse();
    parts.swap(1, 3);
    assert_eq!(assemble(&info, &parts).unwrap(), text.as_bytes());
    // A part whose bytes were changed (same length) fails the hash: nothing comes back.
    let mut bad = parts.clone();
    bad[0].1 = vec![b'x'; parts[0].1.len()];
    let e = assemble(&info, &bad).unwrap_err();
    assert!(
        e.contains("hash to sha256:") && e.contains("nothing of it was merged"),
        "{e}"
    );
    // One missing, one twice, a wrong total.
    let e = assemble(&info, &parts[1..]).unwrap_err();
    assert!(e.contains("parts are here"), "{e}");
    let mut twice = parts.clone();
    twice[0] = twice[1].clone();
    assert!(
        assemble(&info, &twice)
            .unwrap_err()
            .contains("missing or twice")
    );
    let mut short = parts.clone();
    short[0].1.pop();
    assert!(assemble(&info, &short).unwrap_err().contains("announced"));
}

#[test]
fn part_headers_round_trip_and_hostile_values_are_refused() {
    let info = PartInfo {
        index: 2,
        ..info_for("hello world", 3)
    };
    let text = info.headers();
    fn get(t: &str) -> impl Fn(&str) -> String + '_ {
        move |name: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or("")
                .trim()
                .to_string()
        }
    }
    assert_eq!(PartInfo::from_headers(get(&text)), Ok(Some(info.clone())));
    assert_eq!(PartInfo::from_headers(|_| String::new()), Ok(None));
    let with = |header: &str, value: &str| {
        let changed: String = text
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{header}: ")) {
                    format!("{header}: {value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        PartInfo::from_headers(get(&changed)).unwrap_err()
    };
    let e = with(PART_HEADER, "2/1000000000");
    assert!(
        e.contains("1000000000 parts") && e.contains("at most 10000"),
        "{e}"
    );
    let e = with(PART_HEADER, "4/3");
    assert!(e.contains("part 4 of 3"), "{e}");
    let e = with(PART_HEADER, "0/3");
    assert!(e.contains("part 0 of 3"), "{e}");
    let e = with(PART_HEADER, "two/3");
    assert!(e.contains("INDEX/COUNT"), "{e}");
    let e = with(SIZE_HEADER, "99999999999999");
    assert!(e.contains("99999999999999 bytes"), "{e}");
    let e = with(SIZE_HEADER, "-1");
    assert!(e.contains("not a number"), "{e}");
    let e = with(HASH_HEADER, "md5:abc");
    assert!(e.contains("sha256:"), "{e}");
    let e = with(TRANSFER_HEADER, "../../etc");
    assert!(e.contains("not a transfer id"), "{e}");
    let e = with(OF_HEADER, "nothing");
    assert!(e.contains("not a Message-ID"), "{e}");
}

#[test]
fn parts_of_one_transfer_must_agree() {
    let a = info_for("hello world", 3);
    assert_eq!(
        a.agrees_with(&PartInfo {
            index: 3,
            ..a.clone()
        }),
        Ok(())
    );
    let e = PartInfo {
        count: 4,
        ..a.clone()
    }
    .agrees_with(&a)
    .unwrap_err();
    assert!(e.contains("count 4") && e.contains("said 3"), "{e}");
    let other = PartInfo {
        hash: hash(b"other"),
        ..a.clone()
    };
    assert!(other.agrees_with(&a).unwrap_err().contains("hash"));
}

#[test]
fn a_refused_size_is_halved_down_to_the_floor() {
    assert_eq!(smaller_limit(200_000), Some(100_000));
    assert_eq!(smaller_limit(20_000), Some(MIN_MAIL_SIZE));
    assert_eq!(smaller_limit(MIN_MAIL_SIZE), None);
    assert_eq!(smaller_limit(100), None);
}

/// A stand-in for the mail builder: a fixed cost per mail, and content that grows by a third
/// (base64) or, for a part whose text starts with `z`, compresses to a tenth.
fn fake(piece: Piece<'_>) -> Result<(Option<PartInfo>, Vec<u8>, u64), String> {
    let ratio = if piece.body.starts_with(b"z") {
        0.1
    } else {
        1.34
    };
    let size = 2_000 + (piece.body.len() as f64 * ratio) as u64;
    Ok((piece.part, piece.body.to_vec(), size))
}

#[test]
fn plan_sends_small_changes_whole_and_cuts_large_ones_to_fit() {
    let small = "a".repeat(1_000);
    let mails = plan(small.as_bytes(), "<w@x>", 20_000, fake, |m| m.2).unwrap();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].0.is_none());
    let large: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 7) as u8))
        .collect();
    let mails = plan(large.as_bytes(), "<w@x>", 20_000, fake, |m| m.2).unwrap();
    assert!(mails.len() >= 14, "{}", mails.len());
    assert!(mails.iter().all(|m| m.2 <= 20_000));
    let infos: Vec<&PartInfo> = mails.iter().map(|m| m.0.as_ref().unwrap()).collect();
    let n = infos.len() as u32;
    for (i, info) in infos.iter().enumerate() {
        assert_eq!((info.index, info.count), (i as u32 + 1, n));
        assert_eq!(info.transfer, infos[0].transfer);
        info.check().unwrap();
    }
    let chunks: Vec<(u32, Vec<u8>)> = mails
        .iter()
        .map(|m| (m.0.as_ref().unwrap().index, m.1.clone()))
        .collect();
    assert_eq!(assemble(infos[0], &chunks).unwrap(), large.as_bytes());
    // Each attempt is a transfer of its own.
    let again = plan(large.as_bytes(), "<w@x>", 20_000, fake, |m| m.2).unwrap();
    assert_ne!(again[0].0.as_ref().unwrap().transfer, infos[0].transfer);
}

#[test]
fn plan_cuts_smaller_when_a_part_compresses_worse_than_the_whole() {
    // The whole compresses well (it starts with `z`), its later parts do not: the estimate from
    // the whole is far too optimistic and the cut must shrink until every part fits.
    let text = "z".to_string() + &"q".repeat(300_000);
    let mails = plan(text.as_bytes(), "<w@x>", 30_000, fake, |m| m.2).unwrap();
    assert!(mails.iter().all(|m| m.2 <= 30_000));
    assert_eq!(
        mails
            .iter()
            .map(|m| m.1.clone())
            .collect::<Vec<_>>()
            .concat(),
        text.as_bytes()
    );
}

#[test]
fn plan_refuses_a_limit_without_room_and_too_many_parts() {
    let text = "q".repeat(100_000);
    let e = plan(text.as_bytes(), "<w@x>", 3_000, fake, |m| m.2).unwrap_err();
    assert!(e.contains("leaves no room"), "{e}");
    let huge = "q".repeat(30_000_000);
    let e = plan(huge.as_bytes(), "<w@x>", 4_500, fake, |m| m.2).unwrap_err();
    assert!(
        e.contains("parts") && e.contains("raise max-mail-size"),
        "{e}"
    );
}
