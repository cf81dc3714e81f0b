"""The double-entry ledger. Every money movement is one Transfer whose entries sum to zero,
posted at most once per (kind, reference). Balances live on the accounts and change in the same
transaction as the entries; buyer wallets cannot go below zero (a CHECK constraint)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.db import IntegrityError, connections, transaction
from django.db.models import F

from apps.payments.exceptions import InsufficientFunds, LedgerUnbalanced
from apps.payments.models import Account, Entry, Transfer

A = Account.Kind
AVAILABLE, FROZEN = Entry.Bucket.AVAILABLE, Entry.Bucket.FROZEN


@dataclass(frozen=True)
class Leg:
    account: Account
    bucket: str
    amount: int


def _account(key: str, *, kind: str, currency: str, **fields: object) -> Account:
    account, _ = Account.objects.get_or_create(
        key=key, defaults={"kind": kind, "currency": currency, **fields}
    )
    return account


def wallet_account(*, user_id: int, currency: str) -> Account:
    return _account(
        f"wallet:{user_id}:{currency}", kind=A.WALLET, currency=currency, user_id=user_id
    )


def merchant_account(*, currency: str) -> Account:
    return _account(f"merchant:{currency}", kind=A.MERCHANT, currency=currency, allow_negative=True)


def clearing_account(*, channel: str, currency: str) -> Account:
    return _account(
        f"clearing:{channel}:{currency}",
        kind=A.CLEARING,
        currency=currency,
        channel=channel,
        allow_negative=True,
    )


def fees_account(*, currency: str) -> Account:
    return _account(f"fees:{currency}", kind=A.FEES, currency=currency, allow_negative=True)


def funding_account(*, currency: str) -> Account:
    return _account(f"funding:{currency}", kind=A.FUNDING, currency=currency, allow_negative=True)


def ledger_post(
    *, kind: str, reference: str, legs: Sequence[Leg], memo: str = "", actor: str = ""
) -> tuple[Transfer, bool]:
    """Post one transfer. Returns (transfer, posted): posted is False when this (kind,
    reference) was posted before — then nothing moves. Raises InsufficientFunds (nothing
    posted) when a wallet would go negative."""
    if sum(leg.amount for leg in legs) != 0:
        total = sum(leg.amount for leg in legs)
        raise LedgerUnbalanced(f"{kind} {reference}: entries sum to {total}")
    # No read first: the (kind, reference) constraint refuses a second posting at its first
    # statement, and the transaction rolls back before any balance moves.
    try:
        return _post(kind, reference, legs, memo, actor), True
    except IntegrityError as exc:
        existing = Transfer.objects.filter(kind=kind, reference=reference).first()
        if existing is not None:  # posted before, or a concurrent posting won
            return existing, False
        raise InsufficientFunds() from exc


@transaction.atomic(using="default")
def _post(kind: str, reference: str, legs: Sequence[Leg], memo: str, actor: str) -> Transfer:
    transfer = Transfer.objects.create(kind=kind, reference=reference, memo=memo, actor=actor)
    Entry.objects.bulk_create(
        [
            Entry(transfer=transfer, account=leg.account, bucket=leg.bucket, amount=leg.amount)
            for leg in legs
        ]
    )
    # Accounts in id order: concurrent postings never deadlock.
    for leg in sorted(legs, key=lambda leg: (leg.account.id, leg.bucket)):
        Account.objects.filter(id=leg.account.id).update(**{leg.bucket: F(leg.bucket) + leg.amount})
    return transfer


def wallet_topup(
    *, user_id: int, amount: int, currency: str, reference: str, actor: str
) -> Transfer:
    """Credit a wallet from the funding account (an operator's audited top-up)."""
    if amount <= 0:
        raise ValueError("a top-up must be positive")
    transfer, _ = ledger_post(
        kind="topup",
        reference=reference,
        legs=[
            Leg(funding_account(currency=currency), AVAILABLE, -amount),
            Leg(wallet_account(user_id=user_id, currency=currency), AVAILABLE, amount),
        ],
        memo=f"top-up of {amount} {currency}",
        actor=actor,
    )
    return transfer


def wallet_freeze(*, user_id: int, amount: int, currency: str, reference: str) -> bool:
    """Move ``amount`` from available to frozen (a payment's try). Raises InsufficientFunds."""
    wallet = wallet_account(user_id=user_id, currency=currency)
    return ledger_post(
        kind="wallet_freeze",
        reference=reference,
        legs=[Leg(wallet, AVAILABLE, -amount), Leg(wallet, FROZEN, amount)],
    )[1]


def wallet_pay(*, user_id: int, amount: int, currency: str, reference: str) -> None:
    """A wallet payment's try and confirm at once: the wallet pays the merchant. Both of its
    transfers are posted (``wallet_freeze`` then ``wallet_capture``, as a separate try and
    confirm would), with one read, two INSERTs and one UPDATE per account, accounts in id
    order. Runs inside the caller's transaction on `default` (the TCC log and the wallet's
    fence are written with it); raises InsufficientFunds, and the caller's transaction must
    then roll back. The reference is fresh (fenced by the caller), so no posting check."""
    if not connections["default"].in_atomic_block:
        raise RuntimeError("wallet_pay belongs inside the caller's transaction")
    wallet_key, merchant_key = f"wallet:{user_id}:{currency}", f"merchant:{currency}"
    accounts = {a.key: a for a in Account.objects.filter(key__in=[wallet_key, merchant_key])}
    wallet = accounts.get(wallet_key)
    if wallet is None or wallet.available < amount:  # a hint only: the UPDATE decides
        raise InsufficientFunds()
    merchant = accounts.get(merchant_key) or merchant_account(currency=currency)
    freeze, capture = Transfer.objects.bulk_create(
        [
            Transfer(kind="wallet_freeze", reference=reference),
            Transfer(kind="wallet_capture", reference=reference),
        ]
    )
    Entry.objects.bulk_create(
        [
            Entry(transfer=freeze, account=wallet, bucket=AVAILABLE, amount=-amount),
            Entry(transfer=freeze, account=wallet, bucket=FROZEN, amount=amount),
            Entry(transfer=capture, account=wallet, bucket=FROZEN, amount=-amount),
            Entry(transfer=capture, account=merchant, bucket=AVAILABLE, amount=amount),
        ]
    )
    # The merchant's row is everyone's: locked as late as possible (the last statements).
    for account in sorted((wallet, merchant), key=lambda account: account.id):
        if account is wallet:
            if not Account.objects.filter(id=wallet.id, available__gte=amount).update(
                available=F("available") - amount
            ):
                raise InsufficientFunds()
        else:
            Account.objects.filter(id=merchant.id).update(available=F("available") + amount)


def wallet_unfreeze(*, user_id: int, amount: int, currency: str, reference: str) -> bool:
    """Give frozen money back to available (a payment's cancel)."""
    wallet = wallet_account(user_id=user_id, currency=currency)
    return ledger_post(
        kind="wallet_unfreeze",
        reference=reference,
        legs=[Leg(wallet, FROZEN, -amount), Leg(wallet, AVAILABLE, amount)],
    )[1]


def wallet_capture(*, user_id: int, amount: int, currency: str, reference: str) -> bool:
    """Pay the merchant from frozen money (a wallet payment's confirm)."""
    return ledger_post(
        kind="wallet_capture",
        reference=reference,
        legs=[
            Leg(wallet_account(user_id=user_id, currency=currency), FROZEN, -amount),
            Leg(merchant_account(currency=currency), AVAILABLE, amount),
        ],
    )[1]


def card_capture(*, channel: str, amount: int, fee: int, currency: str, reference: str) -> bool:
    """A card capture: the merchant earns ``amount``; the channel owes us ``amount - fee``
    (clearing) and the fee is an expense."""
    return ledger_post(
        kind="card_capture",
        reference=reference,
        legs=[
            Leg(merchant_account(currency=currency), AVAILABLE, amount),
            Leg(clearing_account(channel=channel, currency=currency), AVAILABLE, -(amount - fee)),
            Leg(fees_account(currency=currency), AVAILABLE, -fee),
        ],
    )[1]


def refund_post(
    *,
    method: str,
    channel: str,
    user_id: int,
    amount: int,
    currency: str,
    reference: str,
    memo: str = "",
    actor: str = "",
) -> bool:
    """Money back to the buyer: to the wallet, or through the channel's clearing account.
    ``memo`` (why) and ``actor`` (who decided it) are kept on the journal transfer."""
    target = (
        wallet_account(user_id=user_id, currency=currency)
        if method == "wallet"
        else clearing_account(channel=channel, currency=currency)
    )
    return ledger_post(
        kind="refund",
        reference=reference,
        legs=[
            Leg(merchant_account(currency=currency), AVAILABLE, -amount),
            Leg(target, AVAILABLE, amount),
        ],
        memo=memo[:300],
        actor=actor[:100],
    )[1]


def card_capture_reversal(*, capture_reference: str) -> bool:
    """Undo the card capture posted as ``capture_reference`` (the payment's TCC xid), which the
    bank says never happened — reconciliation's correction. The reversal is the exact negation
    of the capture's own entries, so the fee taken back is the fee posted then, whatever the
    channel charges today. Returns False, posting nothing, when there is no such capture or it
    was reversed before (idempotent)."""
    capture = (
        Transfer.objects.filter(kind="card_capture", reference=capture_reference)
        .prefetch_related("entries__account")
        .first()
    )
    if capture is None:
        return False
    return ledger_post(
        kind="card_capture_reversal",
        reference=capture_reference,
        legs=[Leg(entry.account, entry.bucket, -entry.amount) for entry in capture.entries.all()],
        memo="the channel reports no capture",
        actor="reconciliation",
    )[1]
