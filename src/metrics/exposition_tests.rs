use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn wanted_values(page: &str, list: &[&str]) -> Vec<(usize, f64)> {
    let n = names(list);
    let mut out = Vec::new();
    scan(page, Wanted::Names(&n), |i, s| out.push((i, s.value)));
    out
}

#[test]
fn type_without_help_and_untyped_samples_are_read() {
    let page = "# TYPE a gauge\na 1\nb 2\n";
    assert_eq!(wanted_values(page, &["a", "b"]), vec![(0, 1.0), (1, 2.0)]);
}

#[test]
fn colon_names_are_read() {
    let page = "# HELP vllm:num_requests_waiting Number.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 7.0\n";
    assert_eq!(wanted_values(page, &["vllm:num_requests_waiting"]), vec![(0, 7.0)]);
}

#[test]
fn total_and_created_samples() {
    let page = "# TYPE req counter\nreq_total 5\nreq_created 1.7e9\n";
    assert_eq!(wanted_values(page, &["req"]), vec![(0, 5.0)]);
    assert_eq!(wanted_values(page, &["req_created"]), vec![(0, 1.7e9)]);
}

#[test]
fn histograms_and_summaries_are_plain_lines() {
    let page = "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 0.5\nh_count 3\n# TYPE s summary\ns{quantile=\"0.5\"} 0.2\ns_sum 1\ns_count 2\n";
    let (all, report) = parse_all(page);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(all.len(), 7);
    assert_eq!(all[1].label("le"), Some("+Inf"));
    assert_eq!(wanted_values(page, &["h_count", "s"]), vec![(0, 3.0), (1, 0.2)]);
}

#[test]
fn number_formats() {
    let page = "a 1e-3\nb 42\nc -3.5\nd NaN\ne +Inf\nf -Inf\ng 1.5E+2\n";
    let (all, report) = parse_all(page);
    assert!(report.errors.is_empty());
    let v: Vec<f64> = all.iter().map(|s| s.value).collect();
    assert_eq!(v[0], 1e-3);
    assert_eq!(v[1], 42.0);
    assert_eq!(v[2], -3.5);
    assert!(v[3].is_nan());
    assert_eq!(v[4], f64::INFINITY);
    assert_eq!(v[5], f64::NEG_INFINITY);
    assert_eq!(v[6], 150.0);
}

#[test]
fn garbage_values_are_errors_not_numbers() {
    for bad in ["a infinity", "a 0x10", "a 1_0", "a abc", "a"] {
        let (all, report) = parse_all(bad);
        assert!(all.is_empty(), "{bad} parsed");
        assert_eq!(report.errors.len(), 1, "{bad}");
    }
}

#[test]
fn empty_and_escaped_label_values() {
    let page = "x{a=\"\",b=\"say \\\"hi\\\"\",c=\"back\\\\slash\",d=\"new\\nline\",e=\"x,y=z}\"} 1\n";
    let (all, report) = parse_all(page);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let s = &all[0];
    assert_eq!(s.label("a"), Some(""));
    assert_eq!(s.label("b"), Some("say \"hi\""));
    assert_eq!(s.label("c"), Some("back\\slash"));
    assert_eq!(s.label("d"), Some("new\nline"));
    assert_eq!(s.label("e"), Some("x,y=z}"));
}

#[test]
fn lora_adapter_lists_keep_their_commas() {
    let page = "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"sql-lora, tweet-lora\",waiting_lora_adapters=\"\"} 1.7e9\n";
    let (all, _) = parse_all(page);
    assert_eq!(all[0].label("running_lora_adapters"), Some("sql-lora, tweet-lora"));
}

#[test]
fn timestamps_and_exemplars_and_whitespace() {
    let page = "a{x=\"1\"} 3 1700000000000\nb 4 1700000000.5\nc_bucket{le=\"1\"} 2 # {trace_id=\"abc\"} 0.5 1700000000.1\nd { x = \"1\" , } 5\n  e\t6\r\n";
    let (all, report) = parse_all(page);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(all[0].timestamp, Some(1.7e12));
    assert_eq!(all[1].timestamp, Some(1_700_000_000.5));
    assert_eq!(all[2].value, 2.0);
    assert_eq!(all[2].timestamp, None);
    assert_eq!(all[3].label("x"), Some("1"));
    assert_eq!(all[4].value, 6.0);
}

#[test]
fn openmetrics_eof_and_quoted_names() {
    let page = "# TYPE \"my.metric\" gauge\n{\"my.metric\", l=\"v\"} 2\n{\"other.metric\"} 3\n# EOF\n";
    let (all, report) = parse_all(page);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(all[0].name, "my.metric");
    assert_eq!(all[0].label("l"), Some("v"));
    assert_eq!(all[1].name, "other.metric");
    assert_eq!(all[1].value, 3.0);
}

#[test]
fn declared_without_samples_is_tracked() {
    let n = names(&["vllm:lora_requests_info", "missing"]);
    let report = scan(
        "# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\n# TYPE missing_but_longer gauge\n",
        Wanted::Names(&n),
        |_, _| panic!("no samples expected"),
    );
    assert_eq!(report.declared, vec![true, false]);
}

#[test]
fn malformed_wanted_line_is_reported_and_others_survive() {
    let page = "a{x=\"1\" 3\na{x=\"2\"} 4\nb{unterminated 1\n";
    let n = names(&["a"]);
    let mut got = Vec::new();
    let report = scan(page, Wanted::Names(&n), |_, s| got.push(s.value));
    assert_eq!(got, vec![4.0]);
    assert_eq!(report.errors.len(), 1, "only the wanted family's bad line counts");
    assert_eq!(report.errors[0].line, 1);
}

#[test]
fn hostile_input_never_panics() {
    let cases = [
        "{",
        "{\"",
        "a{",
        "a{\"",
        "a{b",
        "a{b=",
        "a{b=\"",
        "a{b=\"\\",
        "a{b=\"c\"",
        "a{b=\"c\",",
        "#",
        "# TYPE",
        "\u{0}\u{1}",
        "a{\u{e9}=\"x\"} 1",
        "é 1",
        "a 1 2 3 4",
        "\r\n\r\n",
    ];
    for c in cases {
        let _ = parse_all(c);
        let n = names(&["a", "b"]);
        let _ = scan(c, Wanted::Names(&n), |_, _| {});
    }
}

/// Differential check against prometheus-parse on inputs it handles (no colons in names, no commas
/// or escapes in label values).
#[test]
fn agrees_with_prometheus_parse_on_simple_pages() {
    let page = "# HELP http_requests_total Total.\n# TYPE http_requests_total counter\nhttp_requests_total{method=\"post\",code=\"200\"} 1027\nhttp_requests_total{method=\"post\",code=\"400\"} 3\n# TYPE temp gauge\ntemp{room=\"a\"} -2.5\nuntyped_thing 7\n";
    let oracle = prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_string()))).expect("oracle parses");
    let (ours, report) = parse_all(page);
    assert!(report.errors.is_empty());
    assert_eq!(ours.len(), oracle.samples.len());
    for o in &oracle.samples {
        let value = match o.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("unexpected value kind"),
        };
        let found = ours.iter().any(|s| {
            s.name == o.metric && s.value == value && o.labels.iter().all(|(k, v)| s.label(k) == Some(v.as_str()))
        });
        assert!(found, "missing {} {:?}", o.metric, o.labels);
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,200}") {
            let _ = parse_all(&s);
        }

        #[test]
        fn label_values_round_trip(v in "[ -~\n]{0,40}", x in -1e9f64..1e9) {
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let page = format!("m{{l=\"{escaped}\"}} {x}\n");
            let (all, report) = parse_all(&page);
            prop_assert!(report.errors.is_empty());
            prop_assert_eq!(all[0].label("l"), Some(v.as_str()));
            prop_assert_eq!(all[0].value, x);
        }
    }
}

#[test]
fn short_wanted_names_pass_the_prefilter() {
    assert_eq!(
        wanted_values("a 1\nab 2\nabc{x=\"y\"} 3\nabcdefghij 4\n", &["ab", "abcdefghij"]),
        vec![(0, 2.0), (1, 4.0)]
    );
}
