//! Prints rendered lines for a few requests (a quick way to look at the output).
use shipyard_mpi_launch::*;

fn main() -> Result<(), LaunchError> {
    for f in Flavor::ALL {
        let req = LaunchRequest::new(f)
            .ppn(if f == Flavor::MsMpi {
                Ppn::Count(2)
            } else {
                Ppn::AllCores
            })
            .env("FOO", "a b")
            .forward_env("PATH")
            .workdir(Word::var("AZ_BATCH_TASK_WORKING_DIR"))
            .program("/app/x")
            .arg("it's");
        let req = if f == Flavor::MsMpi {
            req
        } else {
            req.ssh_port(23)
                .iface("eth0")
                .wall_clock(WallClock::new(600))
        };
        let plan = req.build()?;
        println!("{f}: {}", plan.render_sh());
        if f == Flavor::MsMpi {
            println!("cmd: {}", plan.render_cmd()?);
        }
        if f != Flavor::MsMpi {
            let hf = req.hostfile("/tmp/hf").build()?;
            println!("{f} with a hostfile: {}", hf.render_sh());
        }
    }
    Ok(())
}
