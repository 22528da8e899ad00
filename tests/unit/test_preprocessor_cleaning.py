"""Preprocessor domain: cleaning steps, masking, token budget cuts and the item text."""

from __future__ import annotations

import os
import random

import pytest

from services.preprocessor.cleaning import ChangeKind, CleanedText, ItemFields, TextPreprocessor
from services.preprocessor.tokens import HuggingFaceTokenBudget, TokenBudget, default_model_path


class WordBudget:
    """A fake TokenBudget: a token is a whitespace-separated word."""

    def count(self, text: str) -> int:
        return len(text.split())

    def truncate(self, text: str, max_tokens: int) -> str:
        words = text.split()
        if len(words) <= max_tokens:
            return text.rstrip()
        # Cut after the n-th word of the original text, keeping its own spacing.
        position = 0
        for word in words[:max_tokens]:
            position = text.index(word, position) + len(word)
        return text[:position].rstrip()


@pytest.fixture(scope="module")
def hf_budget() -> HuggingFaceTokenBudget:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HuggingFaceTokenBudget.from_model_path(default_model_path())


@pytest.fixture
def words() -> TextPreprocessor:
    return TextPreprocessor(WordBudget(), max_tokens=1000)


def test_fake_budget_is_a_token_budget() -> None:
    budget: TokenBudget = WordBudget()
    assert budget.count("a b  c") == 3


# --- markup -------------------------------------------------------------------------------------------------


def test_markup_removed_with_block_separation(words: TextPreprocessor) -> None:
    result = words.clean("<div><p>Soft <b>cot</b>ton</p><p>Machine wash</p><br/>Made in EU</div>")
    assert result.text == "Soft cotton Machine wash Made in EU"
    assert result.changes == (ChangeKind.MARKUP_REMOVED,)


def test_entities_unescaped(words: TextPreprocessor) -> None:
    assert words.clean("<p>Tom &amp; Jerry &lt;3 &#169; &eacute;</p>").text == "Tom & Jerry <3 © é"
    # Entities without any tag are decoded too, and count as markup.
    result = words.clean("Fish &amp; Chips")
    assert result.text == "Fish & Chips"
    assert result.changes == (ChangeKind.MARKUP_REMOVED,)


def test_script_and_style_contents_dropped(words: TextPreprocessor) -> None:
    text = "<style>p { color: red }</style>Nice<script>var x = '<p>no</p>';</script> shoes"
    assert words.clean(text).text == "Nice shoes"


def test_less_than_sign_in_plain_text_is_kept(words: TextPreprocessor) -> None:
    result = words.clean("weight < 5 kg and 3<4")
    assert result.text == "weight < 5 kg and 3<4"
    assert result.changes == ()


# --- unicode and control characters -------------------------------------------------------------------------


def test_nfkc_full_width_and_ligature(words: TextPreprocessor) -> None:
    result = words.clean("ＡＢＣ ﬁne ① x²")
    assert result.text == "ABC fine 1 x2"
    assert result.changes == (ChangeKind.UNICODE_NORMALISED,)


def test_control_and_format_characters_removed(words: TextPreprocessor) -> None:
    # NUL, BEL, zero-width space, soft hyphen, BOM, private use.
    result = words.clean("a\x00b\x07c\u200bd\u00ade\ufefff\ue000g")
    assert result.text == "abcdefg"
    assert result.changes == (ChangeKind.CONTROL_CHARACTERS_REMOVED,)


def test_tabs_and_newlines_become_spaces(words: TextPreprocessor) -> None:
    result = words.clean("  one\ttwo\r\nthree\n\n four  ")
    assert result.text == "one two three four"
    assert result.changes == (ChangeKind.WHITESPACE_COLLAPSED,)


def test_clean_text_reports_nothing(words: TextPreprocessor) -> None:
    assert words.clean("Red running shoes, size 42.") == CleanedText(
        text="Red running shoes, size 42.", changes=(), token_count=5, truncated=False
    )


def test_empty_text(words: TextPreprocessor) -> None:
    assert words.clean("") == CleanedText(text="", changes=(), token_count=0, truncated=False)
    assert words.clean(" <p> </p> ").text == ""


def test_changes_are_in_declared_order(words: TextPreprocessor) -> None:
    text = "<p>ＡＢＣ\x00  mail a@b.com or +1 202-555-0143</p> " + "w " * 2000
    result = words.clean(text)
    assert result.changes == (
        ChangeKind.MARKUP_REMOVED,
        ChangeKind.CONTROL_CHARACTERS_REMOVED,
        ChangeKind.UNICODE_NORMALISED,
        ChangeKind.WHITESPACE_COLLAPSED,
        ChangeKind.EMAIL_MASKED,
        ChangeKind.PHONE_MASKED,
        ChangeKind.TRUNCATED,
    )


# --- personal data ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["john.doe@example.com", "J_Smith+shop@mail.co.uk", "o'brien@sub.domain.io", "josé@exemple.fr"],
)
def test_emails_masked(words: TextPreprocessor, address: str) -> None:
    result = words.clean(f"Contact {address}, thanks.")
    assert result.text == "Contact [EMAIL], thanks."
    assert result.changes == (ChangeKind.EMAIL_MASKED,)


@pytest.mark.parametrize("text", ["user@localhost", "a@b", "@handle", "size 10@2x", "me@example.c"])
def test_not_emails(words: TextPreprocessor, text: str) -> None:
    assert words.clean(text).text == text


@pytest.mark.parametrize(
    "number",
    ["+44 20 7946 0958", "+33 1 42 68 53 00", "+49 30 901820", "+1 (202) 555-0143", "+81 3-3224-9999"],
)
def test_international_phone_numbers_masked_in_any_region(number: str) -> None:
    for region in ("US", "DE", "ZZ"):
        preprocessor = TextPreprocessor(WordBudget(), max_tokens=100, phone_region=region)
        result = preprocessor.clean(f"Call {number} today")
        assert result.text == "Call [PHONE] today", region
        assert result.changes == (ChangeKind.PHONE_MASKED,)


@pytest.mark.parametrize("number", ["(202) 555-0143", "202-555-0143", "202.555.0143", "650 253 0000"])
def test_national_us_numbers_masked(words: TextPreprocessor, number: str) -> None:
    assert words.clean(f"Call {number}.").text == "Call [PHONE]."


@pytest.mark.parametrize(
    "text",
    [
        "Replacement part 740000801 fits all models",
        "Shower head 4 1/2-Inch, chrome",
        "Released in 2019, remastered 2021",
        "Now $1,299.99 (was $1,499.00)",
        "Pack of 12, 250 ml each, 3-5 days",
        "ISBN 978-3-16-148410-0",
    ],
)
def test_numbers_that_are_not_phone_numbers_kept(words: TextPreprocessor, text: str) -> None:
    result = words.clean(text)
    assert result.text == text
    assert ChangeKind.PHONE_MASKED not in result.changes


def test_masking_can_be_switched_off() -> None:
    preprocessor = TextPreprocessor(WordBudget(), max_tokens=100, mask_personal_data=False)
    assert preprocessor.clean("a@b.com +44 20 7946 0958").text == "a@b.com +44 20 7946 0958"


def test_arguments_validated() -> None:
    with pytest.raises(ValueError):
        TextPreprocessor(WordBudget(), max_tokens=0)
    with pytest.raises(ValueError):
        TextPreprocessor(WordBudget(), max_tokens=10, phone_region="XX")


# --- token budget -------------------------------------------------------------------------------------------


def test_fake_budget_truncation(words: TextPreprocessor) -> None:
    preprocessor = TextPreprocessor(WordBudget(), max_tokens=3)
    result = preprocessor.clean("one two three four five")
    assert result == CleanedText(text="one two three", changes=(ChangeKind.TRUNCATED,), token_count=3, truncated=True)


def test_hf_count_excludes_special_tokens(hf_budget: HuggingFaceTokenBudget) -> None:
    assert hf_budget.count("") == 0
    assert hf_budget.count("hello") == 1
    assert hf_budget.count("unbelievable playing tokenizers") == hf_budget.count("unbelievable") + 1 + 3


def test_hf_truncate_under_budget_is_unchanged(hf_budget: HuggingFaceTokenBudget) -> None:
    text = "A short description of running shoes."
    assert hf_budget.truncate(text, 50) == text
    assert hf_budget.truncate(text, hf_budget.count(text)) == text
    assert hf_budget.truncate(text, 0) == ""


def test_hf_truncate_cuts_on_token_boundaries(hf_budget: HuggingFaceTokenBudget) -> None:
    text = "tokenizers"  # token, ##izer, ##s
    pieces = hf_budget._tokenizer.encode(text, add_special_tokens=False).offsets
    assert len(pieces) > 1
    for n in range(1, len(pieces) + 1):
        cut = hf_budget.truncate(text, n)
        assert cut == text[: pieces[n - 1][1]]
        assert hf_budget.count(cut) == n


def test_hf_truncate_is_exact_on_random_text(hf_budget: HuggingFaceTokenBudget) -> None:
    rng = random.Random(7)
    vocabulary = [
        "shoe",
        "running,",
        "ultra-light",
        "Größe",
        "東京",
        "x" * 120,
        "4½",
        "(202)",
        "émigré",
        "!!",
        " ",
    ]
    for _ in range(200):
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 60)))
        total = hf_budget.count(text)
        max_tokens = rng.randint(1, 40)
        cut = hf_budget.truncate(text, max_tokens)
        assert text.startswith(cut)
        assert cut == cut.rstrip()
        if total <= max_tokens:
            assert cut == text.rstrip()
        else:
            # Longest prefix: WordPiece keeps exactly max_tokens tokens.
            assert hf_budget.count(cut) == max_tokens


def test_hf_truncate_window_grows_for_long_tokens(hf_budget: HuggingFaceTokenBudget) -> None:
    # Words of >100 characters are one [UNK] each, far more than the 16 characters per token of the first
    # window.
    text = " ".join(["y" * 150] * 40)
    cut = hf_budget.truncate(text, 10)
    assert hf_budget.count(cut) == 10
    assert cut == " ".join(["y" * 150] * 10)


def test_real_budget_cleaning(hf_budget: HuggingFaceTokenBudget) -> None:
    preprocessor = TextPreprocessor(hf_budget, max_tokens=8)
    short = preprocessor.clean("Waterproof hiking boots")
    assert short.text == "Waterproof hiking boots"
    assert short.truncated is False
    assert short.token_count == hf_budget.count(short.text)
    long = preprocessor.clean("<p>Waterproof hiking boots with a grippy sole, ideal for rain and snow</p>")
    assert long.truncated is True
    assert long.token_count == hf_budget.count(long.text) <= 8
    assert long.changes == (ChangeKind.MARKUP_REMOVED, ChangeKind.TRUNCATED)
    assert "Waterproof hiking boots with a grippy sole, ideal for rain and snow".startswith(long.text)


def test_ten_megabyte_text(hf_budget: HuggingFaceTokenBudget) -> None:
    preprocessor = TextPreprocessor(hf_budget, max_tokens=256)
    paragraph = "<p>Soft cotton T-shirt, call +1 202-555-0143 or mail shop@example.com &amp; save.</p>\n"
    text = paragraph * (10_000_000 // len(paragraph) + 1)
    result = preprocessor.clean(text)
    assert result.truncated is True
    assert result.token_count == hf_budget.count(result.text) == 256
    assert result.text.startswith("Soft cotton T-shirt, call [PHONE] or mail [EMAIL] & save. Soft cotton")
    assert "<p>" not in result.text
    # Same cut as when the text is only slightly over budget, i.e. the window changes nothing.
    assert preprocessor.clean(paragraph * 20).text == result.text


def test_window_waits_for_an_unfinished_tag() -> None:
    # A huge attribute straddles the first window: its text must not leak, and the cut must be the full-text
    # one.
    preprocessor = TextPreprocessor(WordBudget(), max_tokens=5)
    text = "one two " + '<img src="data:' + "A" * 100_000 + '"> three four five six'
    assert preprocessor.clean(text).text == "one two three four five"


def test_truncation_cuts_only_at_budget_with_fake_budget_huge_text() -> None:
    preprocessor = TextPreprocessor(WordBudget(), max_tokens=4)
    result = preprocessor.clean("alpha beta gamma delta " * 500_000)
    assert result.text == "alpha beta gamma delta"
    assert result.changes == (ChangeKind.TRUNCATED,)


# --- item text ----------------------------------------------------------------------------------------------


def test_item_text_order_and_formatting(words: TextPreprocessor) -> None:
    item = ItemFields(
        item_id="sku-1",
        title="Trail Runner 2",
        description="<p>Light &amp; fast.</p>",
        categories=("Shoes", "Running", ""),
        brand="Acme",
        attributes={"weight_kg": 0.25, "size": 42.0, "waterproof": True, "vegan": False, "color": "red"},
    )
    result = words.build_item_text(item)
    assert result.text == (
        "Trail Runner 2. Acme. Shoes > Running. "
        "color: red; size: 42; vegan: no; waterproof: yes; weight_kg: 0.25. Light & fast."
    )
    assert result.changes == (ChangeKind.MARKUP_REMOVED,)
    assert result.truncated is False
    # Deterministic: attribute order of the mapping does not matter.
    reordered = ItemFields(
        item_id="sku-1",
        title=item.title,
        description=item.description,
        categories=item.categories,
        brand=item.brand,
        attributes=dict(reversed(list(item.attributes.items()))),
    )
    assert words.build_item_text(reordered) == result


def test_item_text_skips_empty_parts_and_double_periods(words: TextPreprocessor) -> None:
    assert words.build_item_text(ItemFields(item_id="1", title="Mug.", description="Holds tea.")).text == (
        "Mug. Holds tea."
    )
    assert words.build_item_text(ItemFields(item_id="1", title="", brand="Acme", description="x")).text == ("Acme. x")
    assert words.build_item_text(ItemFields(item_id="1", title="Mug", attributes={"": "blue"})).text == ("Mug. blue")
    assert words.build_item_text(ItemFields(item_id="1", title=" ", attributes={"color": "  "})).text == ""


def test_empty_item(words: TextPreprocessor) -> None:
    assert words.build_item_text(ItemFields(item_id="1", title="")) == CleanedText(
        text="", changes=(), token_count=0, truncated=False
    )


def test_item_truncation_cuts_description_first(hf_budget: HuggingFaceTokenBudget) -> None:
    preprocessor = TextPreprocessor(hf_budget, max_tokens=16)
    item = ItemFields(
        item_id="1",
        title="Trail Runner",
        brand="Acme",
        categories=("Shoes",),
        description="An extremely long description " * 200,
    )
    result = preprocessor.build_item_text(item)
    assert result.text.startswith("Trail Runner. Acme. Shoes. An extremely")
    assert result.truncated is True
    assert result.token_count == hf_budget.count(result.text) == 16
    assert result.changes[-1] is ChangeKind.TRUNCATED


def test_item_title_over_budget_drops_everything_else() -> None:
    preprocessor = TextPreprocessor(WordBudget(), max_tokens=3)
    result = preprocessor.build_item_text(ItemFields(item_id="1", title="a b c d e", brand="Acme"))
    assert result.text == "a b c."  # the fake budget counts "c." as one word
    assert result.truncated is True


def test_list_versions(words: TextPreprocessor) -> None:
    assert [r.text for r in words.clean_many(["<b>a</b>", "b"])] == ["a", "b"]
    assert [r.text for r in words.build_many([ItemFields(item_id="1", title="t")])] == ["t"]
