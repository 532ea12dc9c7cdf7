import jax
import jax.numpy as jnp
import numpy as np

from silentstar_jax.sampling import SamplingConfig, filter_logits, sample
from silentstar_jax.tokenizer import ByteTokenizer, load_tokenizer


def test_top_k_keeps_exactly_k():
    logits = jnp.array([[0.1, 3.0, 2.0, -1.0, 0.5]])
    kept = np.isfinite(np.asarray(filter_logits(logits, SamplingConfig(top_k=2))))
    assert kept.tolist() == [[False, True, True, False, False]]


def test_top_p_keeps_smallest_nucleus():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    kept = np.isfinite(np.asarray(filter_logits(jnp.log(probs), SamplingConfig(top_p=0.75))))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75, 0.8 >= 0.75
    kept = np.isfinite(np.asarray(filter_logits(jnp.log(probs), SamplingConfig(top_p=0.1))))
    assert kept.tolist() == [[True, False, False, False]]  # the top token always stays


def test_sampling_frequencies_follow_temperature():
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1]]))
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: sample(logits, k, SamplingConfig()))(keys)[:, 0]
    freq = np.bincount(np.asarray(draws), minlength=3) / 4000
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)
    assert int(sample(logits, keys[0], SamplingConfig(greedy=True))[0]) == 0


def test_byte_tokenizer_round_trip_unicode():
    tok = ByteTokenizer()
    text = "héllo ✓ \x00\n"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text
    assert tok.token_str(tok.eos_id) == "<|endoftext|>"
    assert tok.decode([104, tok.eos_id, 105]) == "hi"


def test_hf_tokenizer_from_fixture(fixture_dir):
    tok = load_tokenizer(fixture_dir)
    ids = tok.encode("The quick brown fox")
    assert tok.decode(ids) == "The quick brown fox"
    assert tok.vocab_size == 384


def test_display_escapes_byte_tokens_once():
    """A lone non-UTF-8 byte shows as the four characters \\xaa; control characters are escaped."""
    from silentstar_jax.display import _tok

    tok = ByteTokenizer()
    assert _tok(tok.token_str(0xAA)) == "\\xaa"
    assert _tok(tok.token_str(ord("\n"))) == "\\n"
    assert _tok(tok.token_str(ord("7"))) == "7"
