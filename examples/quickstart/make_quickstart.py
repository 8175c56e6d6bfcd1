"""Writes the quickstart's made-up reranking data and its tiny model config and tokenizer.

The outputs are committed; re-running this script (plain Python 3, no packages) reproduces
them byte for byte. The world: 24 topics, each with its own nouns and verbs. A query asks
about one thing in one topic; a relevant document is about the same topic and uses the
query's words (as relevant documents tend to), an irrelevant one is about another topic with
the same sentence templates. An untrained model ranks at chance; one that learns to match the query against
the document ranks the relevant document first.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

TOPICS = {
    "baking": (["bread", "dough", "oven", "flour", "yeast", "crust"], ["knead", "bake", "proof", "slice"]),
    "cycling": (["bike", "chain", "saddle", "pedal", "brake", "tire"], ["ride", "oil", "pump", "adjust"]),
    "gardening": (["tomato", "soil", "compost", "seedling", "hose", "weed"], ["water", "plant", "prune", "mulch"]),
    "aquarium": (["fish", "tank", "filter", "gravel", "algae", "heater"], ["feed", "clean", "cycle", "stock"]),
    "camping": (["tent", "stove", "lantern", "sleeping", "campfire", "backpack"], ["pitch", "pack", "light", "hike"]),
    "guitar": (["string", "fret", "chord", "pick", "amp", "capo"], ["tune", "strum", "play", "restring"]),
    "coffee": (["espresso", "grinder", "bean", "milk", "kettle", "filter"], ["brew", "grind", "roast", "froth"]),
    "painting": (["canvas", "brush", "easel", "palette", "oil", "acrylic"], ["paint", "blend", "sketch", "varnish"]),
    "plumbing": (["pipe", "faucet", "drain", "valve", "leak", "sink"], ["fix", "unclog", "seal", "replace"]),
    "running": (["shoe", "marathon", "pace", "sprint", "stretch", "track"], ["run", "train", "jog", "recover"]),
    "knitting": (["yarn", "needle", "scarf", "stitch", "wool", "sweater"], ["knit", "purl", "cast", "block"]),
    "sailing": (["boat", "sail", "mast", "anchor", "harbor", "rope"], ["sail", "moor", "tack", "steer"]),
    "photography": (["camera", "lens", "shutter", "tripod", "flash", "aperture"], ["shoot", "focus", "edit", "frame"]),
    "beekeeping": (["hive", "bee", "honey", "queen", "smoker", "comb"], ["harvest", "inspect", "feed", "split"]),
    "chess": (["pawn", "knight", "bishop", "rook", "opening", "endgame"], ["castle", "checkmate", "defend", "attack"]),
    "skiing": (["ski", "slope", "boot", "pole", "lift", "powder"], ["ski", "carve", "wax", "turn"]),
    "astronomy": (["telescope", "star", "planet", "moon", "galaxy", "eyepiece"], ["observe", "align", "track", "map"]),
    "pottery": (["clay", "wheel", "kiln", "glaze", "vase", "bowl"], ["throw", "fire", "trim", "shape"]),
    "swimming": (["pool", "goggles", "lap", "stroke", "lane", "cap"], ["swim", "dive", "float", "kick"]),
    "woodwork": (["plank", "saw", "chisel", "joint", "sander", "drill"], ["cut", "sand", "glue", "carve"]),
    "cheese": (["cheddar", "rennet", "curd", "whey", "brine", "rind"], ["age", "press", "salt", "melt"]),
    "roofing": (["shingle", "gutter", "flashing", "ladder", "tar", "rafter"], ["patch", "inspect", "nail", "repair"]),
    "climbing": (["rope", "harness", "carabiner", "boulder", "chalk", "belay"], ["climb", "belay", "rappel", "grip"]),
    "pets": (["puppy", "kitten", "leash", "collar", "litter", "vet"], ["walk", "groom", "train", "adopt"]),
}

QUERY_TEMPLATES = [
    "how do i {verb} the {noun} ({topic})",
    "{topic}: {verb} a {noun}?",
    "{noun} tips for {topic}",
    "{topic} {noun} help",
]

DOCUMENT_TEMPLATES = [
    "{topic}: {verb} the {noun}, then {verb2} the {noun2}.",
    "In {topic}, a good {noun} needs a {noun2}.",
    "{topic} basics: {verb} the {noun} gently.",
    "Every {topic} fan should {verb} the {noun}.",
]


def words_of(topic, rng):
    nouns, verbs = TOPICS[topic]
    picked = rng.sample(nouns, 2)
    return {"topic": topic, "noun": picked[0], "noun2": picked[1], "verb": rng.choice(verbs),
            "verb2": rng.choice(verbs)}


def query(topic, rng):
    """A query and the words it asks about."""
    asked = words_of(topic, rng)
    return rng.choice(QUERY_TEMPLATES).format(**asked), asked


def document(topic, rng, asked=None):
    """A document about `topic`; a relevant one uses the words the query asked about."""
    words = words_of(topic, rng)
    if asked is not None:
        words.update(noun=asked["noun"], verb=asked["verb"])
    return rng.choice(DOCUMENT_TEMPLATES).format(**words)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_data():
    rng = random.Random(7)
    # (query, positive) pairs: MultipleNegativesRankingLoss takes its negatives from the
    # other rows of the batch.
    train = []
    for topic in TOPICS:
        for _ in range(60):
            q, asked = query(topic, rng)
            train.append({"query": q, "positive": document(topic, rng, asked)})
    rng.shuffle(train)
    write_jsonl(HERE / "train.jsonl", train)

    dev = []
    for topic in TOPICS:
        for _ in range(2):
            q, asked = query(topic, rng)
            negatives = [document(t, rng) for t in rng.sample([t for t in TOPICS if t != topic], 9)]
            dev.append({"query": q, "positive": [document(topic, rng, asked)], "negative": negatives})
    write_jsonl(HERE / "dev.jsonl", dev)

    # Listwise rows for LambdaLoss and friends: graded labels, 2 for a document that answers
    # the query, 1 for one on the same topic, 0 for other topics.
    listwise = []
    for topic in TOPICS:
        for _ in range(15):
            q, asked = query(topic, rng)
            documents = [(document(topic, rng, asked), 2.0), (document(topic, rng), 1.0)]
            documents += [(document(t, rng), 0.0) for t in rng.sample([t for t in TOPICS if t != topic], 6)]
            rng.shuffle(documents)
            listwise.append({"query": q, "documents": [d for d, _ in documents],
                             "labels": [label for _, label in documents]})
    rng.shuffle(listwise)
    write_jsonl(HERE / "train_listwise.jsonl", listwise)


def make_model():
    model = HERE / "model"
    model.mkdir(exist_ok=True)
    words = set()
    words.update(TOPICS)
    for nouns, verbs in TOPICS.values():
        words.update(nouns)
        words.update(verbs)
    for template in QUERY_TEMPLATES + DOCUMENT_TEMPLATES:
        for word in template.replace(",", " ").replace(";", " ").replace(".", " ").replace(":", " ").replace("?", " ").replace("(", " ").replace(")", " ").split():
            if not word.startswith("{"):
                words.add(word.lower())
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    punctuation = list(".,;:!?'\"()-")
    vocab = specials + punctuation + letters + ["##" + l for l in letters] + sorted(words - set(letters))
    ids = {token: index for index, token in enumerate(vocab)}

    def special(token):
        return {"id": ids[token], "content": token, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}

    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(t) for t in specials],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [ids["[CLS]"]], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [ids["[SEP]"]], "tokens": ["[SEP]"]},
            },
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids},
    }
    (model / "tokenizer.json").write_text(json.dumps(tokenizer, indent=1) + "\n")
    (model / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64,
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "mask_token": "[MASK]", "padding_side": "right", "truncation_side": "right",
    }, indent=2) + "\n")
    (model / "config.json").write_text(json.dumps({
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
    }, indent=2) + "\n")


if __name__ == "__main__":
    make_data()
    make_model()
