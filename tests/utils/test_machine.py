import platform

from bitdet.utils.machine import cpu_name


def test_cpu_name_is_the_model_name_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
    )
    assert cpu_name(str(cpuinfo)) == f"AMD EPYC 7B13 64-Core Processor ({platform.machine()})"


def test_cpu_name_without_a_model_name_falls_back_to_platform(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t:\nfeatures\t: fp asimd\n"
    )  # aarch64 lists none
    for path in (cpuinfo, tmp_path / "missing"):
        name = cpu_name(str(path))
        assert name.endswith(f"({platform.machine()})")
        assert name.removesuffix(f" ({platform.machine()})") == (
            platform.processor() or "unknown CPU"
        )
