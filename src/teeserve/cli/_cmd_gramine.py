"""``teeserve gramine``: the Gramine manifest of the server, and the enclave's key provisioning step."""

from __future__ import annotations

import argparse
import os
import sys

from .._errors import UsageError

ORDER = 65

_DESCRIPTION = """\
Run teeserve serve inside a Gramine SGX enclave.

  manifest   render the manifest template for one model layout, check that the encrypted files are
             bound to the paths it mounts, and print the steps that follow (gramine-manifest,
             gramine-sgx-sign, gramine-sgx-sigstruct-view, the broker policy, gramine-sgx)
  provision  (runs inside the enclave, from the manifest's fixed command line) attest to the key
             broker, receive the wrap key and put it where the key path needs it, then run the
             teeserve command after '--' in this same process

Two key paths (--mode), both wire-compatible with Gramine:
  gramine-mounts  models and ssl.cfg are Gramine encrypted mounts (key_name); the key is written to
                  /dev/attestation/keys/<key_name> before the model loads, by 'teeserve gramine
                  provision' (--provisioner teeserve) or by Gramine's libsecret_prov_attest.so
                  (--provisioner gramine, LD_PRELOAD + SECRET_PROVISION_* in loader.env)
  in-process      models and ssl.cfg stay Gramine protected files on plain mounts; teeserve checks
                  and decrypts them in enclave memory (teeserve.pf) with the key from the broker
See docs/deploy.md.
"""

_MANIFEST_EXAMPLES = """\
examples:
  teeserve gramine manifest --model-dir /srv/teeserve/models/digits --model-name digits \\
      --ssl-config /srv/teeserve/tls/ssl.cfg --broker teeserve-broker:4433 \\
      --broker-ca /opt/teeserve/broker-ca.pem -o teeserve.manifest.template
  teeserve gramine manifest ... --mode in-process --enclave-size 8G --threads 96 --wrap-key wrap_key
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "gramine",
        help="Gramine SGX: render the server's manifest; provision keys inside the enclave",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(title="gramine commands", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _help(p))

    m = sub.add_parser(
        "manifest",
        help="render the Gramine manifest template of teeserve serve",
        description="Render the Gramine manifest template of 'teeserve serve' for one model: the venv's "
        "Python as libos.entrypoint with a fixed loader.argv, trusted files for the interpreter, its "
        "standard library and the installed packages, the model directory and ssl.cfg as encrypted "
        "mounts (--mode gramine-mounts) or plain mounts of protected files (--mode in-process), "
        "sgx.remote_attestation = \"dcap\", and the key broker in loader.env (SECRET_PROVISION_*). "
        "Each file is mounted at its host path: encrypt the files for exactly that path.",
        epilog=_MANIFEST_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--model-dir", required=True, metavar="DIR",
                   help="absolute host path of the model's base directory (numbered versions inside)")
    m.add_argument("--model-name", required=True, metavar="NAME", help="model name served (--model_name)")
    m.add_argument("--ssl-config", metavar="FILE", help="absolute host path of the encrypted ssl.cfg "
                   "(TLS ends in the enclave); without it the server runs without TLS, which is only for tests")
    m.add_argument("--broker", default="teeserve-broker:4433", metavar="HOST:PORT",
                   help="key broker(s), SECRET_PROVISION_SERVERS syntax (default: teeserve-broker:4433, the "
                   "Kubernetes Service of deploy/k8s)")
    m.add_argument("--broker-ca", default="/opt/teeserve/broker-ca.pem", metavar="FILE",
                   help="CA certificate of the broker's TLS certificate, a trusted file (default: %(default)s)")
    m.add_argument("--mode", choices=("gramine-mounts", "in-process"), default="gramine-mounts",
                   help="who decrypts: Gramine's encrypted mounts, or teeserve in process (default: %(default)s)")
    m.add_argument("--provisioner", choices=("teeserve", "gramine"), default="teeserve",
                   help="who fetches the key: 'teeserve gramine provision', or Gramine's "
                   "libsecret_prov_attest.so (gramine-mounts only) (default: %(default)s)")
    m.add_argument("--key-name", default="default", metavar="NAME",
                   help="key_name of the encrypted mounts (/dev/attestation/keys/NAME) (default: %(default)s)")
    m.add_argument("--enclave-size", default="4G", metavar="SIZE", help="sgx.enclave_size (default: %(default)s)")
    m.add_argument("--threads", type=int, default=64, metavar="N", help="sgx.max_threads (default: %(default)s)")
    m.add_argument("--stack-size", default="4M", metavar="SIZE", help="sys.stack.size (default: %(default)s)")
    m.add_argument("--port", type=int, default=8500, help="gRPC port (default: %(default)s)")
    m.add_argument("--rest-port", type=int, default=8501, help="REST port (default: %(default)s)")
    m.add_argument("--host", default="0.0.0.0", help="listen address (default: %(default)s)")
    m.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="one more 'teeserve serve' argument, e.g. --serve-arg=--enable_batching (repeatable)")
    m.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="interpreter the enclave runs, normally the venv's bin/python3 (default: this one)")
    m.add_argument("--trust", action="append", default=[], metavar="FILE",
                   help="one more trusted file or directory (absolute path; repeatable)")
    m.add_argument("--isv-prod-id", type=int, default=1, help="sgx.isvprodid (default: %(default)s)")
    m.add_argument("--isv-svn", type=int, default=1,
                   help="sgx.isvsvn; raise it with every security fix, and the policy's min_isv_svn with it "
                   "(default: %(default)s)")
    m.add_argument("--log-level", default="error", help="Gramine's loader.log_level (default: %(default)s)")
    m.add_argument("--wrap-key", metavar="FILE",
                   help="wrap key, only to check the paths bound into a few encrypted files (never written "
                   "into the manifest)")
    m.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="output, e.g. teeserve.manifest.template")
    m.add_argument("--force", action="store_true", help="overwrite the output file")
    m.set_defaults(func=_manifest)

    v = sub.add_parser(
        "provision",
        help="(inside the enclave) get the wrap key by attestation, then run a teeserve command",
        description="Attest to the key broker with an RA-TLS certificate whose quote comes from the TEE, "
        "receive the wrap key, and put it where --mode needs it: /dev/attestation/keys/NAME for Gramine's "
        "encrypted mounts, or (in-process) hand it to the 'serve' command after '--' through an anonymous "
        "memory file. Broker and CA default to SECRET_PROVISION_SERVERS and SECRET_PROVISION_CA_CHAIN_PATH, "
        "the key name to SECRET_PROVISION_SET_KEY (as with Gramine's own library). An unreachable broker is "
        "retried with backoff; a denial exits 1.",
        epilog="example (the loader.argv that 'teeserve gramine manifest' writes):\n"
        "  python -m teeserve gramine provision --mode gramine-mounts -- serve --model_name=digits ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--mode", choices=("gramine-mounts", "in-process"), default="gramine-mounts")
    v.add_argument("--key-name", metavar="NAME", help="key to install (default: $SECRET_PROVISION_SET_KEY or "
                   "'default'); gramine-mounts only")
    v.add_argument("--broker", metavar="HOST:PORT", help="broker(s) (default: $SECRET_PROVISION_SERVERS)")
    v.add_argument("--broker-ca", metavar="FILE", help="broker CA (default: $SECRET_PROVISION_CA_CHAIN_PATH)")
    v.add_argument("--tee", choices=("gramine", "sim"), default="gramine",
                   help="evidence: Gramine's /dev/attestation, or the SIMULATED TEE for tests (default: gramine)")
    v.add_argument("--attestation-root", default="/dev/attestation", metavar="DIR",
                   help="Gramine's pseudo-file directory (default: %(default)s)")
    v.add_argument("--sim-key", metavar="PEM", help="simulation private key (--tee sim)")
    v.add_argument("--sim-config", metavar="FILE", help="configuration measured with the code (--tee sim)")
    v.add_argument("--retries", type=int, default=30, help="retries while no broker is reachable (default: 30)")
    v.add_argument("--timeout", type=float, default=10.0, help="seconds per provisioning step (default: 10)")
    v.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="teeserve command to run afterwards in this process, e.g. -- serve ...")
    v.set_defaults(func=_provision)


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _manifest(args: argparse.Namespace) -> int:
    from .. import deploy, pf
    from .._io import OutputExists, write_file_atomic

    if not args.force and os.path.exists(args.output):
        raise OutputExists(args.output)
    spec = deploy.ManifestSpec(
        model_name=args.model_name, model_dir=args.model_dir, broker=args.broker, broker_ca=args.broker_ca,
        mode=args.mode, provisioner=args.provisioner, ssl_config=args.ssl_config, key_name=args.key_name,
        enclave_size=args.enclave_size, threads=args.threads, stack_size=args.stack_size,
        grpc_port=args.port, rest_port=args.rest_port, listen_host=args.host, serve_args=tuple(args.serve_arg),
        isv_prod_id=args.isv_prod_id, isv_svn=args.isv_svn, log_level=args.log_level,
        extra_trusted=tuple(args.trust),
    )
    py = deploy.inspect_python(args.python)
    key = pf.load_wrap_key(args.wrap_key) if args.wrap_key else None
    warnings: list[str] = []
    print(f"bound-path rule: {deploy.BOUND_PATH_RULE}")
    for option, root in (("--model-dir", spec.model_dir), ("--ssl-config", spec.ssl_config)):
        if root is None:
            continue
        if not os.path.exists(root):
            warnings.append(f"{option} {root}: not present here, so its encrypted files were not checked; "
                            "check them where they are (this command with --wrap-key, or teeserve decrypt "
                            "--verify-path)")
            continue
        files = list(deploy.sample_files(root))
        if not files:
            warnings.append(f"{option} {root}: no files to check")
        for r in deploy.check_bound_paths(files, key):
            print(f"  {r.path}: {r.detail}")
            if r.ok is False:
                if not r.protected:
                    raise deploy.BoundPathMismatch(
                        f"{r.path}: {r.detail}; a TEE host must only hold encrypted files "
                        "(teeserve encrypt -w KEY -i PLAIN -o OUT, bound to the mounted host path)")
                raise deploy.BoundPathMismatch(f"{r.path}: {r.detail}. {deploy.BOUND_PATH_RULE}")
            if r.ok is None:
                warnings.append(f"{r.path}: bound path not checked (give --wrap-key to check that it is {r.expected!r})")
    if spec.ssl_config is None:
        warnings.append("no --ssl-config: the server will serve gRPC and REST in PLAINTEXT; TLS must end in the "
                        "enclave for anything but a test")
    if py.argv0_is_symlink:
        warnings.append(f"{py.argv0} is a symlink to {py.entrypoint}: the manifest runs the real binary with "
                        "argv[0] set to the venv path; images should build the venv with 'python -m venv --copies'")
    if spec.provisioner == "gramine":
        warnings.append("--provisioner gramine: Gramine's libsecret_prov_attest.so installs one key "
                        f"({spec.key_name!r}) for both the model and ssl.cfg mounts")
    text = deploy.render_manifest(spec, py)
    write_file_atomic(args.output, text.encode("utf-8"), overwrite=args.force)
    for w in warnings:
        print(f"teeserve: warning: {w}", file=sys.stderr)
    print(f"wrote {args.output} (mode {spec.mode}, provisioner {spec.provisioner}, "
          f"enclave {spec.enclave_size}, {spec.threads} threads, python {py.version} at {py.entrypoint})")
    print(_next_steps(args.output, spec))
    return 0


def _next_steps(output: str, spec: object) -> str:
    from ..deploy import ManifestSpec

    assert isinstance(spec, ManifestSpec)
    stem = output[: -len(".manifest.template")] if output.endswith(".manifest.template") else "teeserve"
    name = os.path.basename(stem)
    secret = spec.key_name
    return f"""
next steps (on the SGX host or in the image build; docs/deploy.md):
  1. gramine-manifest {output} {stem}.manifest
       (hashes every trusted file: the interpreter, the standard library, the venv)
  2. gramine-sgx-sign --manifest {stem}.manifest --output {stem}.manifest.sgx --key ENCLAVE_KEY.pem
       (RSA-3072 key from gramine-sgx-gen-private-key; mount it for this step only, never into an image)
  3. gramine-sgx-sigstruct-view {stem}.sig
       -> mr_enclave, mr_signer, isv_prod_id ({spec.isv_prod_id}), isv_svn ({spec.isv_svn})
  4. pin them in the broker policy (policy.toml), then reload the broker (SIGHUP):
       [secrets.{secret}]
       file = "wrap_key"
       tee = ["sgx"]
       [[secrets.{secret}.sgx]]
       mr_enclave = "<mr_enclave from step 3>"
       # or, to accept every enclave this key signs from this SVN on:
       # mr_signer = "<mr_signer>"
       # isv_prod_id = {spec.isv_prod_id}
       # min_isv_svn = {spec.isv_svn}
  5. gramine-sgx {name}
       (needs /dev/sgx_enclave, /dev/sgx_provision and the AESM socket /var/run/aesmd/aesm.socket)"""


def _provision(args: argparse.Namespace) -> int:
    from ..deploy import ProvisionSettings, install_gramine_key, obtain_wrap_key
    from ..serving._server import configure_logging

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.mode == "in-process":
        if command[:1] != ["serve"]:
            raise UsageError("--mode in-process hands the key to 'serve': give '-- serve ...'")
        if any(a == "--wrap-key" or a.startswith("--wrap-key=") for a in command):
            raise UsageError("-- serve ... must not have --wrap-key: the key comes from the broker")
        from . import build_parser
        from ..serving._flags import options_from_args

        options = options_from_args(build_parser().parse_args(command))  # bad flags: before attesting
    key_name = args.key_name or os.environ.get("SECRET_PROVISION_SET_KEY") or "default"
    configure_logging("text", "info")
    settings = ProvisionSettings.from_env(servers=args.broker, ca_path=args.broker_ca,
                                          retries=args.retries, timeout=args.timeout)
    provider = _provider(args)
    key = obtain_wrap_key(settings, provider)
    where: str
    if args.mode == "gramine-mounts":
        install_gramine_key(key, key_name, args.attestation_root)
        where = f"{os.path.join(args.attestation_root, 'keys', key_name)}"
    else:
        # Handed to the server in this process's memory: no file, and no memfd (Gramine's library OS
        # has no memfd_create).
        keys = {"default": key}
        where = "this process's memory (teeserve decrypts in process)"
    del key
    tag = " (SIMULATED TEE)" if args.tee == "sim" else ""
    print(f"teeserve: wrap key received from the broker{tag}, installed in {where}", file=sys.stderr, flush=True)
    if args.mode == "in-process":
        from ..serving._server import run as run_server

        return run_server(options, keys=keys)
    if not command:
        return 0
    from . import main

    return main(command)


def _provider(args: argparse.Namespace) -> object:
    from ..attest.evidence import get_provider

    if args.tee == "gramine":
        return get_provider("gramine", root=args.attestation_root)
    if not args.sim_key:
        raise UsageError("--tee sim needs --sim-key (teeserve sim init)")
    config = b""
    if args.sim_config:
        try:
            with open(args.sim_config, "rb") as fh:
                config = fh.read()
        except OSError as exc:
            raise UsageError(f"--sim-config {args.sim_config}: {exc.strerror or exc}") from None
    return get_provider("sim", key_path=args.sim_key, config=config)
