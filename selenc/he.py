"""Selective CKKS encryption of client updates, and homomorphic FedAvg of them (TenSEAL, real encryption).

A client encrypts the k coordinates its mask selects and sends the other n − k in plaintext. The selected values are
gathered into one dense vector and packed `slots` = N/2 to a ciphertext, so k values cost ⌈k/slots⌉ ciphertexts
(never one value per ciphertext). The server only ever holds a context without the secret key: it computes the
weighted sum of the clients' ciphertexts slot by slot (ciphertext × plain weight, then add: one CKKS level) and the
weighted mean of the visible parts in plaintext. Every client holds the shared secret key and decrypts the aggregate.
Slot-wise addition is why all clients of one aggregation must use the same mask (selection's `shared` source).

Costs: every call (encrypt, aggregate, decrypt) times itself and returns an `HECost`. encrypt_s covers everything
that produces the upload from the update: checks, the gather, CKKS encoding + encryption and serialization to bytes;
serialize_s reports the serialization share of it separately (about 20-25% of the time for N = 8192), tenseal_s the
share spent inside TenSEAL (the rest, checks and gathers done with numpy, is this module's overhead). Sizes count what
crosses the wire: serialized ciphertexts, visible values as float32, and the mask as the smaller of a bitmap
(⌈n/8⌉ bytes) and a uint32 index list (4k bytes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import tenseal as ts
import torch

from selenc.gradients import FlatLayout
from selenc.observed import ObservedUpdate, PublicInfo
from selenc.settings import HE


class HEError(ValueError):
    """Invalid input to an HE operation: the message says what is wrong and what is allowed."""


# --- sizes and limits --------------------------------------------------------------------------------------------
def slots(cfg: HE) -> int:
    """Values one CKKS ciphertext packs: N/2."""
    return cfg.poly_modulus_degree // 2


def ciphertexts_needed(k: int, cfg: HE) -> int:
    """⌈k/slots⌉: the ciphertexts that k densely packed values need (0 for k = 0)."""
    return -(-k // slots(cfg))


def _floor_sig(x: float, digits: int = 3) -> float:
    """x rounded down to `digits` significant digits (so the suggested ratio really fits)."""
    if x <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.floor(x / step) * step


def check_budget(k: int, n: int, cfg: HE) -> None:
    """Refuse k encrypted values out of n when they need more than `he.max_ciphertexts` ciphertexts."""
    limit = cfg.max_ciphertexts * slots(cfg)
    if k > limit:
        raise HEError(
            f"k={k:,} encrypted values (ratio {k / n:.4g} of n={n:,}) need {ciphertexts_needed(k, cfg):,} "
            f"ciphertexts of {slots(cfg)} slots; he.max_ciphertexts={cfg.max_ciphertexts:,} allows at most "
            f"{limit:,} values: use a ratio <= {_floor_sig(limit / n):.3g} or raise he.max_ciphertexts"
        )


def mask_encoding(n: int, k: int) -> tuple[str, int]:
    """The cheaper wire encoding of a mask with k of n set: ("bitmap", ⌈n/8⌉) or ("index", 4k uint32 indices)."""
    bitmap, index = -(-n // 8), 4 * k
    return ("index", index) if index < bitmap else ("bitmap", bitmap)


@dataclass(frozen=True)
class HECost:
    """Time and bytes of one HE call (or of one client's round, see `round_cost`). Times in seconds, sizes in bytes.

    Byte fields describe the update the call produced or consumed: for encrypt the client's upload, for aggregate
    the aggregate the server sends back. wire_bytes = cipher_bytes + plain_bytes + mask_bytes; plaintext_bytes = 4n
    is the same update sent unencrypted as float32, for comparison.
    """

    n: int
    k: int
    ciphertexts: int
    cipher_bytes: int
    plain_bytes: int
    mask_bytes: int
    mask_encoding: str  # "bitmap" or "index"
    wire_bytes: int
    plaintext_bytes: int
    encrypt_s: float = 0.0  # checks + gather + encode/encrypt + serialize
    serialize_s: float = 0.0  # the serialization part of encrypt_s
    tenseal_s: float = 0.0  # the part of encrypt_s spent in TenSEAL (encode, encrypt, serialize); the rest is ours
    aggregate_s: float = 0.0
    decrypt_s: float = 0.0

    @classmethod
    def of(cls, ciphertexts: Sequence[bytes], n: int, k: int, **times: float) -> HECost:
        """The sizes of an update of n values, k of them in `ciphertexts`, with the given times (encrypt_s=...)."""
        encoding, mask_bytes = mask_encoding(n, k)
        cipher_bytes = sum(len(c) for c in ciphertexts)
        plain_bytes = 4 * (n - k)
        return cls(
            n=n,
            k=k,
            ciphertexts=len(ciphertexts),
            cipher_bytes=cipher_bytes,
            plain_bytes=plain_bytes,
            mask_bytes=mask_bytes,
            mask_encoding=encoding,
            wire_bytes=cipher_bytes + plain_bytes + mask_bytes,
            plaintext_bytes=4 * n,
            **times,
        )


def round_cost(upload: HECost, aggregate: HECost, decrypt: HECost) -> HECost:
    """One client's round: its upload's sizes, its encrypt time, the server's aggregate time, its decrypt time."""
    return replace(upload, aggregate_s=aggregate.aggregate_s, decrypt_s=decrypt.decrypt_s)


# --- the update on the wire --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EncryptedUpdate:
    """A client's upload, or the server's aggregate of K uploads (`clients` = K).

    ciphertexts: the k masked values in flat order, `slots` per ciphertext, each serialized by TenSEAL.
    visible: the n − k other values in flat order, float32 plaintext. mask: bool (n,), True = encrypted.
    """

    ciphertexts: tuple[bytes, ...]
    visible: torch.Tensor
    mask: torch.Tensor
    slots: int
    clients: int = 1
    cost: HECost | None = None  # what producing it cost

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool or self.mask.ndim != 1:
            raise HEError(f"mask must be a 1-D bool tensor, got {self.mask.dtype} of shape {tuple(self.mask.shape)}")
        if self.visible.ndim != 1 or self.visible.numel() != self.n - self.k:
            raise HEError(f"visible must hold n - k = {self.n - self.k} values, got shape {tuple(self.visible.shape)}")
        if len(self.ciphertexts) != -(-self.k // self.slots):
            raise HEError(
                f"{len(self.ciphertexts)} ciphertexts for k={self.k} values; expected ceil(k/{self.slots}) = "
                f"{-(-self.k // self.slots)}"
            )

    @property
    def n(self) -> int:
        return self.mask.numel()

    @cached_property
    def k(self) -> int:
        return int(np.count_nonzero(self.mask.cpu().numpy()))

    def observed(self, layout: FlatLayout, public: PublicInfo) -> ObservedUpdate:
        """The server's view: visible values, mask, layout and public facts; the ciphertexts are left out."""
        if layout.n != self.n:
            raise HEError(f"layout has n={layout.n} coordinates, this update has n={self.n}; they must match")
        return ObservedUpdate(self.visible.clone(), self.mask.clone(), layout, public)


# --- contexts and the two roles ----------------------------------------------------------------------------------
def secret_context(cfg: HE) -> ts.Context:
    """A fresh CKKS context with a new key pair (secret key included): the clients' shared key."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        cfg.poly_modulus_degree,
        coeff_mod_bit_sizes=list(cfg.coeff_mod_bit_sizes),
        n_threads=cfg.threads,
    )
    ctx.global_scale = 2.0**cfg.scale_bits
    return ctx


def _as_arrays(update: torch.Tensor, mask: torch.Tensor, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a flat update and its mask; return them as numpy arrays (views when already on the CPU).

    numpy, not torch: single-threaded passes over n values stay fast when another process holds a core (torch's
    intra-op threads were measured 10x slower then).
    """
    if not isinstance(update, torch.Tensor) or update.ndim != 1 or not update.is_floating_point():
        shape = tuple(update.shape) if isinstance(update, torch.Tensor) else type(update).__name__
        raise HEError(f"update must be a 1-D float tensor (a flat update), got {shape}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 1:
        what = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise HEError(f"mask must be a 1-D bool tensor (True = encrypt), got {what}")
    if mask.numel() != update.numel():
        raise HEError(f"update has {update.numel():,} values and mask {mask.numel():,}; they must have equal length")
    if n is not None and update.numel() != n:
        raise HEError(f"update has {update.numel():,} values; expected n={n:,} (the model's coordinates)")
    u = update.detach().cpu()
    u = (u if u.dtype in (torch.float32, torch.float64) else u.float()).numpy()
    # any NaN/inf makes the sum non-finite: one fast pass without an n-sized temporary; a non-finite sum (NaN/inf,
    # or a rare overflow of finite values) pays for the exact count
    with np.errstate(over="ignore", invalid="ignore"):
        total = u.sum()
    if not np.isfinite(total):
        bad = int(np.count_nonzero(~np.isfinite(u)))
        if bad:
            raise HEError(f"update holds {bad} NaN/inf values; only finite values can be encrypted or averaged")
    return u, mask.detach().cpu().numpy()


def _encrypt_chunk(ctx: ts.Context, values: np.ndarray) -> tuple[bytes, float]:
    """One ciphertext of up to `slots` values (TenSEAL encodes them as float64), serialized; returns the bytes and
    the serialization time."""
    vec = ts.ckks_vector(ctx, values)
    t = time.perf_counter()
    blob = vec.serialize()
    return blob, time.perf_counter() - t


def decrypt(ctx: ts.Context, enc: EncryptedUpdate) -> tuple[torch.Tensor, HECost]:
    """Decrypt `enc` with a secret context and scatter it back into the full float32 update of length n."""
    t0 = time.perf_counter()
    if not ctx.has_secret_key():
        raise HEError("this context holds no secret key: only clients can decrypt")
    values = np.empty(enc.k, dtype=np.float64)
    for j, blob in enumerate(enc.ciphertexts):
        a, b = j * enc.slots, min((j + 1) * enc.slots, enc.k)
        out = ts.ckks_vector_from(ctx, blob).decrypt()
        if len(out) != b - a:
            raise HEError(f"ciphertext {j} holds {len(out)} values; expected {b - a} (slots={enc.slots}, k={enc.k})")
        values[a:b] = out
    mask = enc.mask.cpu().numpy()
    full = np.empty(enc.n, dtype=np.float32)
    full[mask] = values
    full[~mask] = enc.visible.cpu().numpy()
    return torch.from_numpy(full), HECost.of(enc.ciphertexts, enc.n, enc.k, decrypt_s=time.perf_counter() - t0)


class HEClient:
    """A client: holds the CKKS context WITH the secret key; encrypts its update and decrypts aggregates.

    All clients of a federation share one key: the first builds it from `cfg`, the others from its `secret_bytes()`
    (sent over a channel the server cannot read). The server gets `public_bytes()` only.
    """

    def __init__(self, cfg: HE, secret: bytes | None = None):
        self.cfg = cfg
        self.slots = slots(cfg)
        self._visible_index = np.empty(0, dtype=bool)  # scratch for ~mask, reused across calls of the same n
        if secret is None:
            self.context = secret_context(cfg)
        else:
            self.context = ts.context_from(secret, n_threads=cfg.threads)
            if not self.context.has_secret_key():
                raise HEError("a client needs a context with the secret key; these bytes hold a public context")
            self.context.global_scale = 2.0**cfg.scale_bits

    def secret_bytes(self) -> bytes:
        """The context with the secret key, for the other clients only."""
        return self.context.serialize(save_secret_key=True)

    def public_bytes(self) -> bytes:
        """The context without the secret key (parameters + public key), for the server.

        Relinearization and Galois keys are left out: the weighted sum needs no ciphertext products or rotations.
        """
        return self.context.serialize(save_secret_key=False, save_galois_keys=False, save_relin_keys=False)

    def encrypt(self, update: torch.Tensor, mask: torch.Tensor, n: int | None = None) -> EncryptedUpdate:
        """Encrypt the coordinates `mask` selects as ⌈k/slots⌉ ciphertexts; keep the rest as float32 plaintext.

        `n`, when given, is the expected update length (the model's coordinate count). The ciphertext budget is
        checked before anything is encrypted.
        """
        t0 = time.perf_counter()
        u, m = _as_arrays(update, mask, n)
        k = int(np.count_nonzero(m))
        check_budget(k, u.size, self.cfg)
        hidden = u[m]  # the k selected values, densely packed in flat order
        if self._visible_index.size != m.size:
            self._visible_index = np.empty(m.size, dtype=bool)
        visible = torch.from_numpy(u[np.logical_not(m, out=self._visible_index)].astype(np.float32, copy=False))
        blobs, serialize_s, tenseal_s = [], 0.0, 0.0
        for a in range(0, k, self.slots):
            t = time.perf_counter()
            blob, s = _encrypt_chunk(self.context, hidden[a : a + self.slots])
            tenseal_s += time.perf_counter() - t
            blobs.append(blob)
            serialize_s += s
        del hidden
        mask = torch.from_numpy(m.copy())
        times = {"encrypt_s": time.perf_counter() - t0, "serialize_s": serialize_s, "tenseal_s": tenseal_s}
        cost = HECost.of(blobs, m.size, k, **times)
        return EncryptedUpdate(tuple(blobs), visible, mask, self.slots, cost=cost)

    def decrypt(self, enc: EncryptedUpdate) -> tuple[torch.Tensor, HECost]:
        """The full update (float32, length n) that `enc` carries."""
        return decrypt(self.context, enc)


def normalise_weights(weights: Sequence[float] | None, clients: int) -> np.ndarray:
    """FedAvg weights: None -> equal; otherwise `clients` finite non-negative numbers (e.g. sample counts) with a
    positive sum, normalised to sum to 1."""
    if weights is None:
        return np.full(clients, 1.0 / clients)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != clients:
        raise HEError(f"got {w.size} weights for {clients} clients; give one weight per client (or None for equal)")
    if not np.isfinite(w).all():
        raise HEError(f"weights must be finite, got {w.tolist()}")
    if (w < 0).any():
        raise HEError(f"weights must be >= 0 (e.g. sample counts), got {w.tolist()}")
    if w.sum() <= 0:
        raise HEError(f"weights must have a positive sum, got {w.tolist()}")
    return w / w.sum()


class HEServer:
    """The aggregator: built only from a serialized context without the secret key; it cannot decrypt."""

    def __init__(self, public: bytes, threads: int | None = None):
        if not isinstance(public, bytes):
            raise HEError(f"the server is built from serialized public context bytes, got {type(public).__name__}")
        self.context = ts.context_from(public, n_threads=threads)
        if self.context.has_secret_key():
            raise HEError("these context bytes hold the secret key; the server takes only HEClient.public_bytes()")

    def aggregate(self, updates: Sequence[EncryptedUpdate], weights: Sequence[float] | None = None) -> EncryptedUpdate:
        """Homomorphic weighted FedAvg: Σ w_i · c_i on the ciphertexts, Σ w_i · v_i on the visible values.

        Weights default to equal; given weights are normalised to sum to 1 (see `normalise_weights`). All updates must
        share n, the mask and the packing. The result is an `EncryptedUpdate` with clients = K, its ciphertexts one
        CKKS level lower (about 30% smaller than the uploads'); it shares the uploads' mask tensor.
        """
        t0 = time.perf_counter()
        if not updates:
            raise HEError("aggregate needs at least one client's EncryptedUpdate")
        first = updates[0]
        for i, u in enumerate(updates[1:], start=1):
            if u.n != first.n:
                raise HEError(f"client {i} sent n={u.n:,} values, client 0 n={first.n:,}; all must be equal")
            if u.slots != first.slots:
                raise HEError(f"client {i} packs {u.slots} slots per ciphertext, client 0 {first.slots}")
            if not np.array_equal(u.mask.cpu().numpy(), first.mask.cpu().numpy()):
                diff = int(np.count_nonzero(u.mask.cpu().numpy() != first.mask.cpu().numpy()))
                raise HEError(
                    f"client {i}'s mask differs from client 0's at {diff:,} positions; homomorphic aggregation adds "
                    "ciphertexts slot by slot, so all clients must use the same (shared) mask"
                )
        w = normalise_weights(weights, len(updates))
        blobs = []
        for j in range(len(first.ciphertexts)):
            acc = None
            for u, wi in zip(updates, w, strict=True):
                if wi == 0.0:  # contributes nothing: skip the deserialization and the multiply
                    continue
                term = ts.ckks_vector_from(self.context, u.ciphertexts[j]) * float(wi)
                acc = term if acc is None else acc.add_(term)
            blobs.append(acc.serialize())
        visible = np.zeros(first.n - first.k, dtype=np.float64)  # the plaintext part, averaged in float64
        for u, wi in zip(updates, w, strict=True):
            visible += wi * u.visible.cpu().numpy()
        visible = torch.from_numpy(visible.astype(np.float32))
        cost = HECost.of(blobs, first.n, first.k, aggregate_s=time.perf_counter() - t0)
        return EncryptedUpdate(tuple(blobs), visible, first.mask, first.slots, len(updates), cost)  # mask: shared

    def decrypt(self, enc: EncryptedUpdate) -> tuple[torch.Tensor, HECost]:
        """Always refused: the server's context holds no secret key (raises `HEError`)."""
        return decrypt(self.context, enc)


def encrypt_cost_of_one_full_ciphertext(
    client: HEClient, repeats: int = 20, serialize: bool = True, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median seconds to encrypt one full ciphertext of `slots` values (and serialize it, as `encrypt` does).

    `clock` picks wall time (default) or e.g. `time.process_time` (CPU time: robust when other processes share the
    cores). The ideal cost of encrypting k values is ⌈k/slots⌉ times this.
    """
    values = np.random.default_rng(0).standard_normal(client.slots) * 1e-2
    _encrypt_chunk(client.context, values)  # warm-up: the first encryption after key generation is slower
    times = []
    for _ in range(repeats):
        t = clock()
        if serialize:
            _encrypt_chunk(client.context, values)
        else:
            ts.ckks_vector(client.context, values)
        times.append(clock() - t)
    return float(np.median(times))
