use super::*;
use crate::verify::{HEADER, has_key};

fn split(path: &Path, name: &str, n: u64, cells: Cells) -> Result<Side, VerifyError> {
    Side::read(path, name, &|_| Ok(()), "id", n, cells)
}

fn columns(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn rows_of_files_with_other_columns_are_compared_on_the_columns_they_share() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(
        path("n.csv"),
        "id,changed_at,note\n1,2025-10-21 10:00:00,x\n2,2025-10-21 10:00:00,x\n\
         3,2025-10-21 10:00:00,y\n4,2025-10-21 10:00:00,y\n",
    )
    .unwrap();
    // Before ADD COLUMN note (and with a column dropped since), then after it.
    std::fs::write(
        path("s.csv"),
        "id,gone,changed_at\n1,a,2025-10-21 10:00:00\n2,b,2025-10-21 11:00:00\n",
    )
    .unwrap();
    std::fs::write(
        path("s-2.csv"),
        "id,changed_at,note\n3,2025-10-21 10:00:00,y\n4,2025-10-21 10:00:00,z\n",
    )
    .unwrap();
    let nightly = split(&path("n.csv"), "n", 2, Cells::Exact).unwrap();
    let reference = nightly.header.clone();
    assert_eq!(reference, columns(&["id", "changed_at", "note"]));
    let mut stream = Side::new(2).unwrap();
    for name in ["s.csv", "s-2.csv"] {
        let check = |h: &[String]| has_key(h, "id");
        stream
            .add(
                &path(name),
                name,
                Some(&reference),
                &check,
                "id",
                Cells::Exact,
            )
            .unwrap();
    }
    let stream = stream.finish().unwrap();
    assert_eq!(stream.layouts.len(), 1);
    assert_eq!(stream.layouts[0].missing, columns(&["note"]));
    assert_eq!(stream.layouts[0].extra, columns(&["gone"]));
    let diff = compare(nightly, stream, &[], &reference).unwrap();
    assert_eq!(diff.matching, 2, "{diff:?}");
    let fields = |id: i64| {
        let (_, f) = diff.differing.1.iter().find(|(i, _)| *i == id).unwrap();
        f.iter().map(|f| f.field.clone()).collect::<Vec<_>>()
    };
    assert_eq!(diff.differing.0, 2);
    assert_eq!(fields(2), ["changed_at"]);
    assert_eq!(fields(4), ["note"]);
}

#[test]
fn many_buckets_find_the_same_differences() {
    let dir = tempfile::tempdir().unwrap();
    let header = HEADER.join(",");
    let mut nightly = format!("{header}\n");
    let mut stream = format!("{header}\n");
    for id in 1..=500 {
        let row = format!("{id},1,2025-10-21 10:00:00,a,name,old,new{id}\n");
        nightly.push_str(&row);
        if id != 250 {
            // The stream in another order, one row missing, one changed, one doubled.
            let row = if id == 77 {
                row.replace("new77", "changed")
            } else {
                row
            };
            stream.insert_str(header.len() + 1, &row);
        }
    }
    stream.push_str("12,1,2025-10-21 10:00:00,a,name,old,new12\n");
    let (n, s) = (dir.path().join("n.csv"), dir.path().join("s.csv"));
    std::fs::write(&n, nightly).unwrap();
    std::fs::write(&s, stream).unwrap();
    let buckets = bucket_count(&n, std::slice::from_ref(&s), 1000);
    assert!(buckets > 10, "{buckets}");
    let diff = compare(
        split(&n, "n", buckets, Cells::Exact).unwrap(),
        split(&s, "s", buckets, Cells::Exact).unwrap(),
        &[],
        &columns(&HEADER),
    )
    .unwrap();
    assert_eq!(
        (diff.nightly_rows, diff.stream_rows, diff.matching),
        (500, 500, 498)
    );
    assert_eq!(diff.only_in_nightly, (1, vec![250]));
    assert_eq!(diff.only_in_stream.0, 0);
    assert_eq!(diff.differing.0, 1);
    assert_eq!(diff.differing.1[0].0, 77);
    assert_eq!(diff.duplicates, (1, vec![(12, "stream")]));
    assert_eq!(diff.gaps, (0, vec![]));
    assert!(!diff.agrees());
}

#[test]
fn ids_in_neither_copy_are_counted_and_listed_but_are_no_difference() {
    let dir = tempfile::tempdir().unwrap();
    let header = HEADER.join(",");
    let mut text = format!("{header}\n");
    for id in [3, 4, 7, 8, 9, 10, 15, 80, 81, 200] {
        text.push_str(&format!("{id},1,2025-10-21 10:00:00,a,name,old,new\n"));
    }
    let (n, s) = (dir.path().join("n.csv"), dir.path().join("s.csv"));
    std::fs::write(&n, &text).unwrap();
    std::fs::write(&s, &text).unwrap();
    for buckets in [1, 7] {
        let diff = compare(
            split(&n, "n", buckets, Cells::Exact).unwrap(),
            split(&s, "s", buckets, Cells::Exact).unwrap(),
            &[],
            &columns(&HEADER),
        )
        .unwrap();
        assert!(diff.agrees());
        assert_eq!(
            diff.gaps,
            (198 - 10, vec![(5, 6), (11, 14), (16, 79), (82, 199)]),
            "{buckets} buckets"
        );
    }
    // A span too wide to list is still counted.
    let wide = format!(
        "{header}\n1,1,2025-10-21 10:00:00,a,name,old,new\n\
         {},1,2025-10-21 10:00:00,a,name,old,new\n",
        1 + GAP_SPAN_LISTED as i64 * 2
    );
    std::fs::write(&n, &wide).unwrap();
    std::fs::write(&s, &wide).unwrap();
    let diff = compare(
        split(&n, "n", 1, Cells::Exact).unwrap(),
        split(&s, "s", 1, Cells::Exact).unwrap(),
        &[],
        &columns(&HEADER),
    )
    .unwrap();
    assert_eq!(diff.gaps, (GAP_SPAN_LISTED * 2 - 1, vec![]));
    assert!(
        IdSet::new(i64::MIN, i64::MAX).is_none(),
        "a span of 2^64 ids is not listed"
    );
}

/// Ids come from files: the extremes of i64 are counted without overflow.
#[test]
fn ids_at_the_ends_of_i64() {
    let dir = tempfile::tempdir().unwrap();
    let row = |id: i64| format!("{id},1,2025-10-21 10:00:00,a,name,old,new\n");
    let text = format!("{}\n{}{}", HEADER.join(","), row(i64::MIN), row(i64::MAX));
    let path = dir.path().join("n.csv");
    std::fs::write(&path, &text).unwrap();
    for buckets in [1, 3] {
        let side = || split(&path, "n", buckets, Cells::Exact).unwrap();
        let diff = compare(side(), side(), &[0], &columns(&HEADER)).unwrap();
        assert!(diff.agrees());
        assert_eq!(diff.matching, 2);
        // 2^64 ids in the span (one more than a u64 holds), 2 in the copies, 1 (0) a
        // neighbouring day's.
        assert_eq!(diff.gaps, (u64::MAX - 2, vec![]));
        assert_eq!(diff.neighbouring, 1);
    }
}
