//! Golden tests of the Charliecloud wrapper (`ch-run`): exact rendered lines and argv under
//! Open MPI and hydra, the plain (launcher-less) form, and the refused combinations.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use pretty_assertions::assert_eq;
use shipyard_mpi_launch::*;

const SSH: &str =
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10";

fn root() -> Word {
    Word::var("AZ_BATCH_NODE_ROOT_DIR")
}

/// The image the plugin unpacks: `$AZ_BATCH_NODE_SHARED_DIR/shipyard/charliecloud/img`.
fn image() -> Word {
    Word::concat([
        Part::Deferred(Deferred::Var("AZ_BATCH_NODE_SHARED_DIR".into())),
        Part::Lit("/shipyard/charliecloud/img".into()),
    ])
}

fn ch(join: bool) -> Container {
    Container::charliecloud(image())
        .join(join)
        .bind(root(), root())
        .pwd(Word::var("AZ_BATCH_TASK_WORKING_DIR"))
        .env("SHIPYARD_VALUE", Word::var("SHIPYARD_VALUE"))
        .env("MODE", "a b")
}

fn req(f: Flavor, ppn: Ppn) -> LaunchRequest {
    LaunchRequest::new(f)
        .hosts(Hosts::batch())
        .ppn(ppn)
        .forward_env("USER")
        .program("/app/hello")
        .args(["-v", "it's"])
}

const COUNT: &str = r#"$(printf '%s\n' "${AZ_BATCH_HOST_LIST}" | tr ',' '\n' | grep -c .)"#;
const CH_TAIL: &str = r#"-b "${AZ_BATCH_NODE_ROOT_DIR}":"${AZ_BATCH_NODE_ROOT_DIR}" -c "${AZ_BATCH_TASK_WORKING_DIR}" --env-no-expand --set-env=SHIPYARD_VALUE="${SHIPYARD_VALUE}" '--set-env=MODE=a b' "${AZ_BATCH_NODE_SHARED_DIR}"/shipyard/charliecloud/img -- /app/hello -v 'it'\''s'"#;

#[test]
fn open_mpi_joins_with_the_local_size_ch_run_reads_itself() {
    let line = req(Flavor::OpenMpi, Ppn::Count(2))
        .container(ch(true))
        .build()
        .unwrap()
        .render_sh();
    assert_eq!(
        line,
        format!(
            r#"OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun -np "$(( {COUNT} * 2 ))" --host "$(printf '%s\n' "${{AZ_BATCH_HOST_LIST}}" | tr ',' '\n' | grep . | sed "s/\$/:2/" | paste -sd, -)" --map-by ppr:2:node --mca plm_rsh_args '{SSH}' -x USER ch-run --join {CH_TAIL}"#
        )
    );
    // the container's variables are arguments, never prefixed launcher variables
    assert!(!line.contains("ENV_"), "{line}");
}

#[test]
fn hydra_joins_with_the_processes_per_node() {
    let line = req(Flavor::Mpich, Ppn::AllCores)
        .container(ch(true))
        .build()
        .unwrap()
        .render_sh();
    assert_eq!(
        line,
        format!(
            r#"HYDRA_LAUNCHER_EXTRA_ARGS='{SSH}' mpiexec -n "$(( {COUNT} * $(nproc) ))" -ppn "$(nproc)" -hosts "${{AZ_BATCH_HOST_LIST}}" -launcher ssh -genv USER "${{USER}}" ch-run --join-ct="$(nproc)" {CH_TAIL}"#
        )
    );
    let line = req(Flavor::IntelMpi, Ppn::Count(3))
        .container(ch(true).program("/opt/ch/bin/ch-run"))
        .build()
        .unwrap()
        .render_sh();
    assert!(
        line.contains(&format!(
            r#"-genv USER "${{USER}}" /opt/ch/bin/ch-run --join-ct=3 {CH_TAIL}"#
        )),
        "{line}"
    );
}

#[test]
fn resolved_argv_with_literal_values() {
    let plan = LaunchRequest::new(Flavor::Mpich)
        .hosts(Hosts::list(["10.0.0.4", "10.0.0.5"]))
        .ppn(Ppn::Count(2))
        .program("/app/hello")
        .container(
            Container::charliecloud("/srv/img")
                .join(true)
                .bind("/mnt/batch", "/mnt/batch")
                .env("K", "v"),
        )
        .build()
        .unwrap();
    let r = plan.resolve(&RunEnv::new()).unwrap();
    let tail: Vec<&str> = r.argv[9..].iter().map(String::as_str).collect();
    assert_eq!(
        r.argv[..9],
        [
            "mpiexec",
            "-n",
            "4",
            "-ppn",
            "2",
            "-hosts",
            "10.0.0.4,10.0.0.5",
            "-launcher",
            "ssh"
        ]
    );
    assert_eq!(
        tail,
        [
            "ch-run",
            "--join-ct=2",
            "-b",
            "/mnt/batch:/mnt/batch",
            "--env-no-expand",
            "--set-env=K=v",
            "/srv/img",
            "--",
            "/app/hello"
        ]
    );
    assert!(!r.env.iter().any(|(k, _)| k.ends_with("K")), "{:?}", r.env);
}

#[test]
fn the_plain_form_needs_no_launcher() {
    assert_eq!(
        ch(false).render_sh("/app/hello", &["-v", "it's"]).unwrap(),
        format!("ch-run {CH_TAIL}")
    );
    // no options at all: just the image and `--`
    assert_eq!(
        Container::charliecloud("/srv/img")
            .render_sh::<&str>("true", &[])
            .unwrap(),
        "ch-run /srv/img -- true"
    );
}

/// The plain line run by a real shell, with `printf` standing in for `ch-run`: every word
/// arrives as one argument, run-time values expanded exactly once.
#[test]
fn the_plain_form_round_trips_through_sh() {
    let line = ch(false)
        .program("printf")
        .render_sh("/app/hello", &["-v", "it's", "$HOME"])
        .unwrap();
    let line = line.replacen("printf", "printf '%s\\n'", 1);
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&line)
        .env("AZ_BATCH_NODE_ROOT_DIR", "/r o'ot")
        .env("AZ_BATCH_TASK_WORKING_DIR", "/r o'ot/wd")
        .env("AZ_BATCH_NODE_SHARED_DIR", "/sh $x")
        .env("SHIPYARD_VALUE", "a \"b\" $c")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        [
            "-b",
            "/r o'ot:/r o'ot",
            "-c",
            "/r o'ot/wd",
            "--env-no-expand",
            "--set-env=SHIPYARD_VALUE=a \"b\" $c",
            "--set-env=MODE=a b",
            "/sh $x/shipyard/charliecloud/img",
            "--",
            "/app/hello",
            "-v",
            "it's",
            "$HOME"
        ]
    );
}

#[test]
fn refused_combinations_name_the_field() {
    let field = |e: LaunchError| match e {
        LaunchError::Invalid { field, .. } | LaunchError::Unsupported { field, .. } => field,
        other => panic!("{other}"),
    };
    let base = || req(Flavor::Mpich, Ppn::Count(2));
    for (r, f) in [
        (base().container(ch(true)).ranks(3), "container.join"),
        (
            base().container(ch(true)).oversubscribe(true),
            "container.join",
        ),
        (
            base().container(Container::singularity("i.sif").join(true)),
            "container.join",
        ),
        (base().container(ch(false).nv(true)), "container.nv"),
        (
            base().container(ch(false).bind_ro("/data", "/in")),
            "container.binds",
        ),
        (
            base().container(Container::charliecloud(Word::default())),
            "container.image",
        ),
        (
            base().flavor(Flavor::MsMpi).container(ch(false)),
            "container",
        ),
    ] {
        let e = r.build().unwrap_err();
        assert!(e.to_string().contains(f), "{e}");
        assert_eq!(field(e), f);
    }
    // Open MPI reads the local size per rank: `ranks` and oversubscription are fine there
    assert!(req(Flavor::OpenMpi, Ppn::Count(2))
        .container(ch(true))
        .ranks(3)
        .build()
        .is_ok());
    // a peer group without a launcher
    assert_eq!(
        field(ch(true).render_sh::<&str>("/app", &[]).unwrap_err()),
        "container.join"
    );
}
