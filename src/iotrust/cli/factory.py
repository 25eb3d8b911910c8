"""``iotrust factory``: the manufacturer's tool (CAs, minting devices, signing vouchers)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from iotrust.adapters.keys.file import passphrase_from_environment
from iotrust.cli.common import STATE, emit, emit_object, errors, out, progress
from iotrust.errors import InputError
from iotrust.ports import SystemClock
from iotrust.services import factory as svc

app = typer.Typer(help="Manufacturer side: factory CAs, device identities, vouchers.",
                  no_args_is_help=True)

FactoryDir = typer.Option(Path("factory"), "--factory", "-f", help="The factory folder.")


def _passphrase() -> bytes:
    return passphrase_from_environment("IOTRUST_FACTORY_PASSPHRASE",
                                       "IOTRUST_FACTORY_PASSPHRASE_FILE")


@app.command("init")
def init(
    name: str = typer.Option(..., help="Manufacturer name (slug), e.g. acme."),
    vendor_id: str = typer.Option(..., "--vendor-id", help="Vendor id, e.g. 0x1234 or acme."),
    product_id: str = typer.Option(..., "--product-id", help="Default product id."),
    factory_dir: Path = FactoryDir,
) -> None:
    """Create a manufacturer root CA, IDevID CA and voucher-signing key.

    Keys are encrypted with IOTRUST_FACTORY_PASSPHRASE (or IOTRUST_FACTORY_PASSPHRASE_FILE).
    """
    with errors():
        f = svc.init_factory(factory_dir, SystemClock(), name=name, vendor_id=vendor_id,
                             product_id=product_id, passphrase=_passphrase())
        emit_object({"factory": str(f.path), "manufacturer": f.name,
                     "root": str(f.path / "root.crt.pem")})


@app.command("mint")
def mint(
    count: int = typer.Option(1, "--count", "-n", min=1, max=1_000_000),
    factory_dir: Path = FactoryDir,
    prefix: str = typer.Option("SN", help="Serial number prefix."),
    product_id: str | None = typer.Option(None, "--product-id"),
    key_store: str = typer.Option("devfile", help="devfile (development) or pkcs11."),
    pkcs11_module: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_MODULE"),
    pkcs11_token: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_TOKEN"),
) -> None:
    """Mint COUNT devices: a factory key in each device's own key store and its IDevID."""
    with errors():
        f = svc.open_factory(factory_dir)
        store = svc.DeviceKeyStore(kind=key_store, module=pkcs11_module, token=pkcs11_token,
                                   pin=os.environ.get("IOTRUST_PKCS11_PIN"))
        with progress(count, "minting") as tick:
            minted = svc.mint(f, SystemClock(), count, passphrase=_passphrase(), keystore=store,
                              prefix=prefix, product_id=product_id, progress=tick)
        if STATE.json:
            emit([{"serial": m.serial, "folder": str(m.folder),
                   "factory_spki_sha256": m.factory_spki_sha256} for m in minted], [])
        else:
            out.print(f"minted {len(minted)} devices "
                      f"({minted[0].serial} … {minted[-1].serial}) in {f.path / 'devices'}")


@app.command("voucher")
def voucher(
    owner: str = typer.Option(..., help="The owner's name (its trust domain owner)."),
    owner_root: Path = typer.Option(..., "--owner-root", exists=True, dir_okay=False,
                                    help="The owner's root CA certificate (PEM)."),
    output: Path = typer.Option(Path("vouchers.jsonl"), "--out", "-o"),
    serial: list[str] | None = typer.Option(None, "--serial", help="Only these serials."),
    factory_dir: Path = FactoryDir,
) -> None:
    """Sign vouchers (one JSON object per line) saying these devices belong to OWNER."""
    with errors():
        f = svc.open_factory(factory_dir)
        folders = svc.device_folders(f, serial or None)
        if not folders:
            raise InputError("no minted devices to vouch for", reason="no_devices")
        signed = svc.write_vouchers(f, SystemClock(), folders, owner=owner,
                                    owner_root_pem=owner_root.read_bytes(),
                                    passphrase=_passphrase())
        output.write_bytes(b"".join(v + b"\n" for v in signed))
        emit_object({"vouchers": len(signed), "file": str(output)})
