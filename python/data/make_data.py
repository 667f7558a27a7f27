"""Write the small synthetic Chinese datasets the five task programs train on with no arguments.

    python python/data/make_data.py        # rewrites python/data/<task>/{train,dev}.jsonl and vocab.txt

Deterministic (fixed seed), so the committed files are exactly what this script writes. Every label
depends on the content, never on length or position alone:
- text_classification: sentiment (正面/负面/中性) of review sentences with negation (不好 is negative,
  不差 positive) and contrast (虽然 X，但是 Y takes Y's polarity); neutral sentences carry no opinion.
- token_classification: person / place / organization spans (CLUENER format) in template sentences;
  people's names are random surname + given-name combinations, and a city inside an organization's name
  (上海银行) is part of the organization, not a place.
- question_answering: several people and facts per context; the question names a person and a relation,
  and the same relation often holds for another person too, so the answer needs both.
- masked_lm: sentences whose masked words can be inferred from the rest (a repeated city, the opinion
  matching the verdict, a fixed phrase).
- multiple_choice: C3-style questions on shorter such contexts (one or two people); the distractors are
  values of the same kind, one of them the same relation's value for the other person when there are two.
"""

from __future__ import annotations

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗")
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚英华玉兰")
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "重庆", "天津", "苏州", "长沙",
          "郑州", "青岛", "厦门", "昆明", "大连", "沈阳", "哈尔滨"]
ORG_HEADS = ["华为", "腾讯", "百度", "小米", "京东", "星海", "远航", "新华", "红星", "蓝天", "金山", "银河"]
ORG_TAILS = ["公司", "银行", "医院", "集团", "研究所", "出版社"]
SCHOOLS = ["清华大学", "北京大学", "复旦大学", "南开大学", "武汉大学", "中山大学", "同济大学", "厦门大学"]
HOBBIES = ["打篮球", "游泳", "唱歌", "画画", "读书", "下棋", "跑步", "钓鱼", "爬山", "弹钢琴"]


def person(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))


def organization(rng: random.Random) -> str:
    head = rng.choice(CITIES) if rng.random() < 0.3 else rng.choice(ORG_HEADS)
    return head + rng.choice(ORG_TAILS)


def distinct_people(rng: random.Random, n: int) -> list[str]:
    people: list[str] = []
    while len(people) < n:
        p = person(rng)
        if all(p not in q and q not in p for q in people):
            people.append(p)
    return people


# ---- text classification -------------------------------------------------------------------
TOPICS = ["这家酒店", "这部电影", "这本书", "这个手机", "那家餐厅", "他们的服务", "这里的房间", "菜的味道",
          "这块屏幕", "产品质量", "故事的剧情", "这次旅行"]
POSITIVE = ["好", "不错", "满意", "精彩", "干净", "实惠", "舒服", "漂亮", "出色", "贴心"]
NEGATIVE = ["差", "糟糕", "失望", "难吃", "脏", "贵", "无聊", "吵", "麻烦", "敷衍"]
DEGREE = ["很", "非常", "特别", "真", "挺", "十分"]
NEGATION = ["不", "不太", "一点也不", "并不"]
NEUTRAL = ["{t}在{c}的市中心。", "我上周去{c}的时候看到了{t}。", "{t}是朋友推荐给我的。", "我们明天讨论{t}。",
           "{t}的介绍写在第二页。", "他问我{t}在哪里。", "{t}是去年在{c}开始的。", "我还没有决定要不要去看{t}。"]


def opinion(rng: random.Random) -> tuple[str, int]:
    """A clause and its polarity (+1 / -1): degree or negation, then an opinion word."""
    positive = rng.random() < 0.5
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    if rng.random() < 0.25:
        return rng.choice(NEGATION) + word, -1 if positive else 1
    return rng.choice(DEGREE) + word, 1 if positive else -1


def classification_example(rng: random.Random) -> dict:
    kind = rng.random()
    if kind < 0.3:
        text = rng.choice(NEUTRAL).format(t=rng.choice(TOPICS), c=rng.choice(CITIES))
        return {"sentence": text, "label": "中性"}
    first, polarity = opinion(rng)
    topic = rng.choice(TOPICS)
    if kind < 0.8:
        text = f"{topic}{first}。"
    else:
        other, polarity = opinion(rng)
        second = rng.choice([t for t in TOPICS if t != topic])
        text = rng.choice(["虽然{a}{x}，但是{b}{y}。", "{a}{x}，可是{b}{y}。"]).format(a=topic, x=first, b=second, y=other)
    return {"sentence": text, "label": "正面" if polarity > 0 else "负面"}


# ---- token classification (CLUENER format) -------------------------------------------------
NER_TEMPLATES = ["{P}昨天去了{L}。", "{P}在{O}工作。", "{O}的{P}来到{L}参加会议。", "我和{P}在{L}见面了。",
                 "{L}的{O}发布了新产品。", "听说{P}要离开{O}去{L}发展。", "{P}和{Q}都是{O}的员工。",
                 "今年{O}在{L}开设了分部。", "{P}说{L}的冬天很冷。", "这是{P}第一次来{L}。",
                 "{O}邀请{P}做报告。", "从{L}到{M}的火车很快。"]
NER_SLOTS = {"P": "name", "Q": "name", "L": "address", "M": "address", "O": "organization"}


def ner_example(rng: random.Random) -> dict:
    template = rng.choice(NER_TEMPLATES)
    people = distinct_people(rng, 2)
    cities = rng.sample(CITIES, 2)
    fill = {"P": people[0], "Q": people[1], "L": cities[0], "M": cities[1], "O": organization(rng)}
    text, label, i = "", {}, 0
    while i < len(template):
        if template[i] == "{":
            slot = template[i + 1]
            entity = fill[slot]
            spans = label.setdefault(NER_SLOTS[slot], {}).setdefault(entity, [])
            spans.append([len(text), len(text) + len(entity) - 1])  # CLUENER: inclusive end
            text += entity
            i += 3
        else:
            text += template[i]
            i += 1
    return {"text": text, "label": label}


# ---- facts: question answering and multiple choice -----------------------------------------
RELATIONS = {
    "born": ("{p}出生于{v}。", ["{p}出生于哪里？", "{p}的家乡在哪里？"], CITIES),
    "work": ("{p}在{v}工作。", ["{p}在哪里工作？", "{p}在什么单位工作？"], None),
    "school": ("{p}毕业于{v}。", ["{p}毕业于哪所学校？", "{p}是在哪里读的大学？"], SCHOOLS),
    "hobby": ("{p}喜欢{v}。", ["{p}喜欢什么？", "{p}的爱好是什么？"], HOBBIES),
}
FILLER = ["那天天气很好。", "大家都很开心。", "后来他们成了朋友。", "这件事很多人都知道。", "会议在下午结束。"]


def value(rng: random.Random, relation: str) -> str:
    pool = RELATIONS[relation][2]
    return organization(rng) if pool is None else rng.choice(pool)


def facts_context(rng: random.Random, n_people: int) -> tuple[list[tuple[str, str, str]], str]:
    """(person, relation, value) facts about n_people people, shuffled with filler, and their text."""
    people = distinct_people(rng, n_people)
    facts = []
    shared = rng.choice(list(RELATIONS))  # one relation every person has: the question must name the person
    for p in people:
        relations = {shared} | set(rng.sample(list(RELATIONS), rng.choice((0, 1))))
        used: set[str] = set()
        for r in sorted(relations):
            v = value(rng, r)
            while v in used:
                v = value(rng, r)
            used.add(v)
            facts.append((p, r, v))
    sentences = [RELATIONS[r][0].format(p=p, v=v) for p, r, v in facts]
    sentences += rng.sample(FILLER, rng.choice((0, 1)))
    rng.shuffle(sentences)
    return facts, "".join(sentences)


def qa_example(rng: random.Random, index: int) -> dict:
    facts, context = facts_context(rng, rng.choice((2, 3)))
    p, r, v = rng.choice(facts)
    sentence = RELATIONS[r][0].format(p=p, v=v)
    start = context.index(sentence) + sentence.index(v, len(p))
    return {"id": f"syn-{index}", "context": context, "question": rng.choice(RELATIONS[r][1]).format(p=p),
            "answers": {"text": [v], "answer_start": [start]}}


def choice_example(rng: random.Random, index: int) -> dict:
    facts, context = facts_context(rng, rng.choice((1, 2)))
    p, r, v = rng.choice(facts)
    choices = [v]
    in_context = [f[2] for f in facts if f[1] == r and f[2] != v]
    choices += in_context[:1]
    while len(choices) < 4:
        other = value(rng, r)
        if other not in choices:
            choices.append(other)
    rng.shuffle(choices)
    return {"id": f"syn-{index}", "context": [context], "question": rng.choice(RELATIONS[r][1]).format(p=p),
            "choice": choices, "answer": v}


# ---- masked language modelling -------------------------------------------------------------
MLM_TEMPLATES = ["{p}出生于{c}，所以{p}是{c}人。", "{t}{pos}，我很满意。", "{t}{neg}，我很失望。",
                 "{p}在{o}工作，{o}离{c}很近。", "{p}毕业于{s}，{s}在{c}。", "{p}每天早上都去{h}，{p}喜欢{h}。",
                 "北京是中国的首都。", "今天天气很好，我们去公园散步吧。", "{p}坐火车从{c}到{d}，{c}到{d}很近。"]


def mlm_example(rng: random.Random) -> dict:
    template = rng.choice(MLM_TEMPLATES)
    cities = rng.sample(CITIES, 2)
    text = template.format(p=person(rng), c=cities[0], d=cities[1], o=organization(rng), s=rng.choice(SCHOOLS),
                           h=rng.choice(HOBBIES), t=rng.choice(TOPICS), pos=rng.choice(DEGREE) + rng.choice(POSITIVE),
                           neg=rng.choice(DEGREE) + rng.choice(NEGATIVE))
    return {"text": text}


TASKS = {
    "text_classification": (lambda rng, i: classification_example(rng), 800, 200),
    "token_classification": (lambda rng, i: ner_example(rng), 600, 150),
    "question_answering": (qa_example, 800, 200),
    "masked_lm": (lambda rng, i: mlm_example(rng), 800, 200),
    "multiple_choice": (choice_example, 600, 150),
}


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    characters: set[str] = set()
    for offset, (task, (make, n_train, n_dev)) in enumerate(TASKS.items()):
        rng = random.Random(1000 + offset)
        rows = [make(rng, i) for i in range(n_train + n_dev)]
        os.makedirs(os.path.join(HERE, task), exist_ok=True)
        write_jsonl(os.path.join(HERE, task, "train.jsonl"), rows[:n_train])
        write_jsonl(os.path.join(HERE, task, "dev.jsonl"), rows[n_train:])
        for row in rows:
            characters.update(json.dumps(row, ensure_ascii=False))
    cjk = sorted(ch for ch in characters if ord(ch) > 0x2000)
    with open(os.path.join(HERE, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIAL + cjk) + "\n")
    print(f"wrote {len(TASKS)} tasks and a vocab of {len(SPECIAL) + len(cjk)} tokens to {HERE}")


if __name__ == "__main__":
    main()
