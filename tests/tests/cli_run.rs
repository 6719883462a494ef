//! The real `flowplane` binary's `run` against an in-process platform: `--output-dir`
//! writes each output as a file that reads back to exactly what was sent through a
//! passthrough node (WAV through hound, PPM, .npy, raw bytes, JSON lines), stdin feeds an
//! input, a failed chunk gives exit 3, and an unknown input name is refused before
//! anything is read or sent. Needs the binaries built (`cargo build -p flowplane-cli`).

use std::{path::Path, process::Stdio, time::Duration};

use flowplane_tests::{Platform, data::manifest, process::binary};
use tokio::io::AsyncWriteExt;

/// One passthrough node per payload type, each its own input and output.
const EVERY_TYPE: &str = "\
name: every-type
nodes:
  - { id: pa, processor: passthrough }
  - { id: pv, processor: passthrough }
  - { id: pt, processor: passthrough }
  - { id: pb, processor: passthrough }
  - { id: pj, processor: passthrough }
  - { id: px, processor: passthrough }
inputs:
  - { name: audio, targets: [{ node: pa }] }
  - { name: video, targets: [{ node: pv }] }
  - { name: tensor, targets: [{ node: pt }] }
  - { name: blob, targets: [{ node: pb }] }
  - { name: json, targets: [{ node: pj }] }
  - { name: text, targets: [{ node: px }] }
outputs:
  - { name: audio, source: { node: pa } }
  - { name: video, source: { node: pv } }
  - { name: tensor, source: { node: pt } }
  - { name: blob, source: { node: pb } }
  - { name: json, source: { node: pj } }
  - { name: text, source: { node: px } }
";

const CALCULATOR: &str = "\
name: calculator
nodes:
  - { id: calc, processor: json.calculator }
inputs:
  - { name: requests, targets: [{ node: calc }] }
outputs:
  - { name: results, source: { node: calc } }
";

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args`, feeding `stdin`, within a minute.
async fn flowplane(args: &[&str], stdin: &[u8]) -> Ran {
    let mut child = tokio::process::Command::new(binary("flowplane"))
        .args(args)
        .env_remove("FLOWPLANE_TOKEN")
        .env_remove("FLOWPLANE_CLIENT_TOKEN_FILE")
        .env_remove("FLOWPLANE_PIPELINE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("flowplane run ends within 60s")
        .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn f32_wav(path: &Path, rate: u32, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        writer.write_sample(*s).unwrap();
    }
    writer.finalize().unwrap();
}

fn npy_f32(shape: &str, values: &[f32]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    file.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_dir_files_read_back_to_exactly_what_was_sent() {
    let platform = Platform::start(1).await;
    platform.wait_until_runnable(&manifest(EVERY_TYPE)).await;
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(at("every.yaml"), EVERY_TYPE).unwrap();

    // 50 ms of audio at 8 kHz: 400 samples, cut by --audio-chunk-ms 20 into 160+160+80.
    let tone: Vec<f32> = (0..400).map(|i| ((i as f32) * 0.05).sin() * 0.5).collect();
    f32_wav(Path::new(&at("tone.wav")), 8000, &tone);
    let mut frames = Vec::new();
    for f in 0..3u8 {
        frames.extend_from_slice(b"P6\n2 2\n255\n");
        frames.extend((0..12).map(|i| i * 20 + f));
    }
    std::fs::write(at("frames.ppm"), &frames).unwrap();
    let values = [1.5f32, -2.0, 3.25, 0.0, 5.0, 6.0];
    std::fs::write(at("t.npy"), npy_f32("(2, 3)", &values)).unwrap();
    // Three 64 KiB binary chunks, the last one short.
    let blob: Vec<u8> = (0..150_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(at("blob.dat"), &blob).unwrap();
    std::fs::write(at("req.jsonl"), "{\"a\": 1}\n[1, 2]\n\"s\"\n").unwrap();
    let text = "first line\nsecond \"quoted\" line\n";

    let out_dir = at("out");
    let ran = flowplane(
        &[
            "run",
            &at("every.yaml"),
            "--pipeline",
            &platform.pipeline.url(),
            "--input",
            &format!("audio={}", at("tone.wav")),
            "--input",
            &format!("video={}", at("frames.ppm")),
            "--input",
            &format!("tensor={}", at("t.npy")),
            "--input",
            &format!("blob={}", at("blob.dat")),
            "--input",
            &format!("json={}", at("req.jsonl")),
            "--input",
            "text=-",
            "--input-type",
            "text=text",
            "--output-dir",
            &out_dir,
            "--output",
            "json",
        ],
        text.as_bytes(),
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let lines: Vec<serde_json::Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results = 3 + 3 + 1 + 3 + 3 + 2;
    assert_eq!(lines.len(), results + 1, "{}", ran.stdout);
    // The summary closes the stream and lists the files written.
    let summary = &lines[results];
    assert_eq!(summary["event"], "summary", "{summary}");
    assert_eq!(summary["results"], results);
    assert_eq!(
        summary["files"].as_array().map(Vec::len),
        Some(6),
        "{summary}"
    );

    let file = |name: &str| Path::new(&out_dir).join(name);
    let mut wav = hound::WavReader::open(file("audio.wav")).unwrap();
    let spec = wav.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (8000, 1, 32)
    );
    assert_eq!(spec.sample_format, hound::SampleFormat::Float);
    let samples: Vec<f32> = wav.samples::<f32>().map(Result::unwrap).collect();
    assert_eq!(samples, tone);

    assert_eq!(std::fs::read(file("video.ppm")).unwrap(), frames);
    let npy = std::fs::read(file("tensor.npy")).unwrap();
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (2, 3)"),
        "{header}"
    );
    let back: Vec<f32> = npy[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(back, values);
    assert_eq!(std::fs::read(file("blob.bin")).unwrap(), blob);
    assert_eq!(
        std::fs::read_to_string(file("json.jsonl")).unwrap(),
        "{\"a\":1}\n[1,2]\n\"s\"\n"
    );
    let texts: Vec<String> = std::fs::read_to_string(file("text.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(texts, ["first line", "second \"quoted\" line"]);
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "audio.wav",
            "blob.bin",
            "json.jsonl",
            "tensor.npy",
            "text.jsonl",
            "video.ppm"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chunk_exits_3_and_stdin_feeds_an_input() {
    let platform = Platform::start(1).await;
    platform.wait_until_runnable(&manifest(CALCULATOR)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calc.yaml");
    std::fs::write(&path, CALCULATOR).unwrap();
    let path = path.to_str().unwrap();
    let requests = "{\"op\": \"add\", \"operands\": [1, 2]}\n\
                    {\"op\": \"div\", \"operands\": [1, 0]}\n\
                    {\"op\": \"mul\", \"operands\": [2, 3]}\n";
    let url = platform.pipeline.url();
    let run = |extra: &'static [&'static str]| {
        let mut args = vec!["run", path, "--pipeline", &url, "--input", "requests=-"];
        args.extend_from_slice(extra);
        args
    };

    let failed = flowplane(
        &run(&["--input-type", "requests=jsonl"]),
        requests.as_bytes(),
    )
    .await;
    assert_eq!(failed.code, Some(3), "{}{}", failed.stdout, failed.stderr);
    assert!(
        failed.stderr.contains("1 of 3 chunks failed"),
        "{}",
        failed.stderr
    );
    assert!(
        failed
            .stdout
            .contains("#1 error InvalidArgument DIVISION_BY_ZERO node=calc"),
        "{}",
        failed.stdout
    );
    assert!(
        failed.stdout.contains("#0 results json {\"result\":3}")
            && failed.stdout.contains("#2 results json {\"result\":6}"),
        "{}",
        failed.stdout
    );
    // The session's lifecycle goes to stderr, with its counts spelt right.
    assert_eq!(failed.stdout.lines().count(), 3, "{}", failed.stdout);
    assert!(
        failed.stderr.contains(" ready\n")
            && failed
                .stderr
                .contains(" closed: 3 chunks in, 2 results, 1 error, 0 failovers\n"),
        "{}",
        failed.stderr
    );

    // All good: exit 0.
    let good = flowplane(
        &run(&["--input-type", "requests=jsonl", "-o", "json"]),
        b"{\"op\": \"add\", \"operands\": [4, 5]}\n",
    )
    .await;
    assert_eq!(good.code, Some(0), "{}", good.stderr);
    // One envelope per line, the payload under `payload`, then the closing summary.
    assert_eq!(
        good.stdout,
        "{\"event\":\"result\",\"output\":\"results\",\"payload\":{\"value\":{\"result\":9}},\"sequence\":0,\"type\":\"json\"}\n\
         {\"chunks\":1,\"errors\":0,\"event\":\"summary\",\"failovers\":0,\"files\":[],\"results\":1}\n"
    );
    let events: Vec<serde_json::Value> = good
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{}", good.stderr);
    assert_eq!(events[0]["event"], "ready");
    assert_eq!(events[1]["event"], "closed");
    assert_eq!(events[1]["session_id"], events[0]["session_id"]);
    for (field, n) in [
        ("chunks", 1),
        ("results", 1),
        ("errors", 0),
        ("failovers", 0),
    ] {
        assert_eq!(events[1][field], n, "{field}: {}", good.stderr);
    }

    // validate and health speak JSON too.
    let valid = flowplane(&["validate", path, "--pipeline", &url, "-o", "json"], b"").await;
    assert_eq!(valid.code, Some(0), "{}", valid.stderr);
    let value: serde_json::Value = serde_json::from_str(&valid.stdout).unwrap();
    assert_eq!(
        (value["valid"].as_bool(), value["nodes"].as_u64()),
        (Some(true), Some(1))
    );
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        CALCULATOR.replace("json.calculator", "json.calculater"),
    )
    .unwrap();
    let invalid = flowplane(
        &[
            "validate",
            broken.to_str().unwrap(),
            "--pipeline",
            &url,
            "-o",
            "json",
        ],
        b"",
    )
    .await;
    assert_eq!(invalid.code, Some(1), "{}", invalid.stderr);
    let value: serde_json::Value = serde_json::from_str(&invalid.stdout).unwrap();
    assert_eq!(value["valid"], false);
    assert!(
        value["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("json.calculater")),
        "{value}"
    );
    assert!(invalid.stderr.contains("(1 problem)"), "{}", invalid.stderr);
    let health = flowplane(&["health", &url, "-o", "json"], b"").await;
    assert_eq!(health.code, Some(0), "{}", health.stderr);
    let value: serde_json::Value = serde_json::from_str(&health.stdout).unwrap();
    assert_eq!(value["status"], "SERVING");

    // A failed chunk in JSON mode: the error envelope, and the summary counts it.
    let failed_json = flowplane(
        &run(&["--input-type", "requests=jsonl", "-o", "json"]),
        requests.as_bytes(),
    )
    .await;
    assert_eq!(failed_json.code, Some(3), "{}", failed_json.stderr);
    let lines: Vec<serde_json::Value> = failed_json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["result", "error", "result", "summary"],
        "{}",
        failed_json.stdout
    );
    assert_eq!(lines[1]["sequence"], 1);
    assert_eq!(lines[1]["error"]["reason"], "DIVISION_BY_ZERO");
    assert_eq!(
        (
            &lines[3]["chunks"],
            &lines[3]["results"],
            &lines[3]["errors"]
        ),
        (&3.into(), &2.into(), &1.into())
    );

    // Without --input-type, stdin is binary: the calculator refuses every chunk.
    let binary = flowplane(&run(&[]), requests.as_bytes()).await;
    assert_eq!(binary.code, Some(3), "{}{}", binary.stdout, binary.stderr);
    assert!(
        binary.stderr.contains("1 of 1 chunk failed"),
        "{}",
        binary.stderr
    );
}

#[tokio::test]
async fn an_unknown_input_is_refused_before_anything_is_read_or_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calc.yaml");
    std::fs::write(&path, CALCULATOR).unwrap();
    let path = path.to_str().unwrap();
    // Nothing listens at the pipeline address and the file does not exist: the refusal
    // has to come before either matters.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    for (args, named) in [
        (
            vec!["--input", "reqests=/nonexistent.jsonl"],
            "--input \"reqests\"",
        ),
        (
            vec![
                "--input",
                "requests=/nonexistent.jsonl",
                "--input-type",
                "other=json",
            ],
            "--input-type \"other\"",
        ),
    ] {
        let mut all = vec!["run", path, "--pipeline", &closed];
        all.extend(args);
        let refused = flowplane(&all, b"").await;
        assert_eq!(refused.code, Some(2), "{}", refused.stderr);
        assert!(refused.stderr.contains(named), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("its inputs are: requests"),
            "{}",
            refused.stderr
        );
    }
    let bad_type = flowplane(
        &[
            "run",
            path,
            "--pipeline",
            &closed,
            "--input",
            "requests=-",
            "--input-type",
            "requests=yaml",
        ],
        b"",
    )
    .await;
    assert_eq!(bad_type.code, Some(2), "{}", bad_type.stderr);
    assert!(
        bad_type.stderr.contains("unknown type \"yaml\""),
        "{}",
        bad_type.stderr
    );
}

#[tokio::test]
async fn help_documents_the_exit_codes_and_the_input_type_rule() {
    let help = std::process::Command::new(binary("flowplane"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for expected in [
        "--output-dir",
        "--input-type",
        "Exit status",
        "3 when",
        ".npy npy",
        "\"summary\"",
    ] {
        assert!(help.contains(expected), "{expected} missing:\n{help}");
    }
}

/// `validate` and `run` agree: a param outside the processor's declared values fails
/// both, naming node, param and the values; `--offline` needs no server at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_refuses_what_run_would_refuse() {
    const SHOUT: &str = "\
name: shout
nodes:
  - { id: loud, processor: text.transform, params: { mode: shout } }
inputs:
  - { name: text, targets: [{ node: loud }] }
outputs:
  - { name: text, source: { node: loud } }
";
    let platform = Platform::start(1).await;
    platform
        .wait_until_runnable(&manifest(&SHOUT.replace("shout }", "upper }")))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shout.yaml");
    std::fs::write(&path, SHOUT).unwrap();
    let path = path.to_str().unwrap();
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "hello\n").unwrap();
    let input = format!("text={}", lines.display());
    let url = platform.pipeline.url();

    let validated = flowplane(&["validate", path, "--pipeline", &url], b"").await;
    assert_eq!(validated.code, Some(1), "{}", validated.stdout);
    assert!(
        validated.stdout.contains("PARAM_NOT_ALLOWED")
            && validated.stdout.contains(
                "node \"loud\": param \"mode\" of processor \"text.transform\" must be one of \"upper\", \"lower\", \"reverse\", got \"shout\""
            ),
        "{}",
        validated.stdout
    );
    let ran = flowplane(&["run", path, "--pipeline", &url, "--input", &input], b"").await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("InvalidArgument") && ran.stderr.contains("got \"shout\""),
        "{}",
        ran.stderr
    );
    // Offline the file's structure is fine (params need the processors' declarations).
    let offline = flowplane(&["validate", path, "--offline"], b"").await;
    assert_eq!(offline.code, Some(0), "{}", offline.stderr);
    assert!(
        offline.stdout.contains("valid offline (1 node, 0 edges"),
        "{}",
        offline.stdout
    );
}
