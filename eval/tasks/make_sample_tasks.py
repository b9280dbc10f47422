"""Writes the data of the offline sample tasks (sample_mc, sample_cloze, sample_ppl) as JSON lines.

    python eval/tasks/make_sample_tasks.py      # rewrites eval/tasks/data/*.jsonl

Every sentence below was written for this repository in the manner of the sample corpus (Shakespeare's
plays and Milton's verse, data/sample/raw); none is taken from the corpus or from a benchmark. The tasks
mirror the formats of the paper's suite, so that tests and the demo exercise the same code paths offline:
  sample_mc     multiple choice, acc and acc_norm (like arc_easy / piqa)
  sample_cloze  last-word prediction, acc and perplexity (like lambada_openai)
  sample_ppl    rolling log-likelihood of whole passages, word/byte perplexity and bits per byte (like wikitext)
The output is deterministic (a fixed seed orders the choices), so re-running changes nothing.
"""

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

# (context, continuation): the continuation is the natural end of the line
MC_PAIRS = [
    ("My lord, the king is come, and", "waits upon your grace within the hall."),
    ("Good morrow, gentle cousin; what news", "from the court this early hour?"),
    ("Go, tell the soldiers", "to rest, and wake them at the dawn."),
    ("I pray you, sir, be patient; for the night", "is cold, and we have far to ride."),
    ("Thou art a villain, and I will", "tell the duke of all thy treachery."),
    ("Farewell, my sweet; when next we meet", "I hope the stars will smile on us."),
    ("Lend me thy hand, and let us", "walk together to the garden gate."),
    ("The old queen is sick, my lord; she", "calls for you and will not take her physic."),
    ("Come, let us in, and with all speed", "make ready for the feast tonight."),
    ("What say you, lady? Will you", "take this ring as token of my love?"),
    ("Hark! I hear the drum; the enemy", "is marching down upon the town."),
    ("Peace, fool! Thou speak'st of", "things thou dost not understand."),
    ("O heavy day! My son is slain, and", "all my hopes lie buried with him."),
    ("Sir, I am bound to you, and", "will repay this kindness when I can."),
    ("The sun is set, the moon is", "risen, and the watchmen walk the walls."),
    ("Bring me my horse, and tell my", "servants I will ride to London straight."),
    ("He that is greedy sits at every", "table, and yet is never satisfied."),
    ("Speak, friend, and let me", "know what fortune brings thee hither."),
    ("Within the garden walked the first of men,", "and all the beasts came gently to his hand."),
    ("Down from the battlements of heaven fell", "the rebel host, and burned upon the lake."),
    ("So spake the angel, and with", "folded wings he stood before the throne."),
    ("Now fell the evening soft, and", "all the birds were silent in their nests."),
    ("Tell me, O muse, of", "the long war waged upon the plains of light."),
    ("A troubled mind is its own prison, and", "no key of gold can set the captive free."),
    ("Let not your heart be troubled; for", "the storm will pass before the dawn."),
    ("Is this a letter from my father? Give", "it me, and I will read it straight."),
    ("The wind blows cold upon the", "heath, and the poor beggar shivers."),
    ("Call in the guard, and see the", "prisoner brought before the duke."),
    ("I know a meadow where the yellow", "cowslips grow, and bees go humming by."),
    ("Away, away! The watch is", "coming, and we must not be found here."),
    ("Fair lady, pardon me, I did", "not know that you were listening."),
    ("Our sport is ended now, and all these", "players must go home before the rain."),
]

# passages whose last word is given away by what came before (a repeated name, a set phrase, the story)
CLOZE = [
    "Enter Romeo and his friend Benvolio. Benvolio calls aloud, but no one answers him, and so he turns at "
    "last to Romeo",
    "The duke commands that every man shall lay his weapon down. The soldiers hear him and obey, and each man "
    "lays down his weapon",
    "Give me some wine, said the old knight, for my throat is dry. The boy brought him a cup, and the knight "
    "drank the wine",
    "A spirit walks the castle walls at midnight. The guards have seen it twice, and now they wait in fear to "
    "see the spirit",
    "The mother kissed her child and whispered, Sleep now, my little one. And soon the little one was fast asleep",
    "She sent a letter to her brother in the camp, and bade the messenger make haste. At dawn the messenger "
    "delivered the letter",
    "The king of France is come to England with his army. The lords ride out to meet him, crying, Welcome to "
    "the king of France",
    "The captain lost his horse in battle, and walked all the long way home, and wept to think upon his horse",
    "Three old women meet upon the moor when the wind is high. When the wind falls, they vanish from the moor",
    "I will tell thee a secret, said the nurse to the young lady, but thou must swear to keep my secret",
    "The fairest flower in all the garden is the rose. The lover plucked it for his lady and gave her the rose",
    "The fallen angels lay upon the burning lake until their leader called them, and they rose up from the lake",
    "In the garden the happy pair walked hand in hand, and the woman spoke softly to her husband, and so did "
    "the husband speak to his wife",
    "The angel warned them of the foe that sought to tempt them, and they gave thanks unto the angel",
    "The tailor made a coat of velvet for the prince, and the prince was pleased, and paid the tailor for the coat",
    "Three times the bell has rung, and yet the gate is shut. Go, knock again upon the gate",
    "Bring forth the prisoner, said the judge. The guards went down into the dungeon and brought up the prisoner",
    "The poet wrote a sonnet to his mistress, and praised her eyes, her lips, her hair; and every line he "
    "wrote was for his mistress",
    "The ship was lost at sea, and all the sailors drowned save one, who swam to shore and told them of the ship",
    "He swore by heaven and by earth that he would keep his word, and all who heard him knew that he would "
    "keep his word",
    "Let us go hunt the deer in the forest, said the duke. The lords took up their bows and followed him into "
    "the forest",
    "The candle burns low, and the night is almost done. Blow out the candle",
    "Sweet music, play for me, for I am sad. The players took their lutes and played sweet music",
    "The fool sang a song of wind and rain, and when the fool had done, the king bade him sing again the song",
    "O Lucius, said Marcus, thou hast wronged me. And Lucius answered, I have not wronged thee, Marcus",
    "Open the door, she cried, for I am cold and weary. The porter rose and slowly opened the door",
    "My father's sword hangs on the wall. Take it down, and fight with my father's sword",
    "The lark sings at the break of day, and all the birds reply. Listen, it is the lark",
    "To London, to London, with all the speed we can! And so they rode all night toward London",
    "Her father would not let her wed the man she loved, and so she fled by night to wed the man she loved",
    "Who knocks so late? It is the messenger from Rome. Then let him in, the messenger from Rome",
    "The old king died at midnight, and in the morning all the bells of the city rang for the king",
]

# passages for rolling perplexity; several are longer than a small model's block size
PPL = [
    """OLIVER.
Good morrow, brother. Thou art up betimes; the house is yet asleep, and the fire not laid.

EDMUND.
I could not sleep. Our father's will lies heavy on my heart, and I have walked the orchard since the cock
crew, thinking how I might deserve the name he gave me. You keep me at home among the grooms, and will not
send me to the schools as he commanded; but I will not be kept so any longer.

OLIVER.
Be patient, boy. The time will come when thou shalt have thy portion, and thy books, and all.

EDMUND.
The time is come already, for I am a man, and will be used like one.""",
    """When the morning star rose up out of the east, the fields grew green beneath her light. The shepherds
drove their flocks into the valley, and the streams ran clear and cold among the stones. Then spake the
elder of the swains, and bade the younger sing of those who loved in former days and were not loved again;
and he began, and sang until the sun stood high above the hills, and all the flocks lay down to rest in
the shadow of the oaks.""",
    """KING.
How now, my lords! What tidings from the north?

FIRST LORD.
My liege, the rebels are in arms, and march toward York with twenty thousand men. The earl
is with them, and his brother, and the bishop hath given them his blessing.

KING.
Then we must meet them ere they reach the town. Call up the musters of the southern shires,
and send to Wales for archers. We will set forward on the morrow.

SECOND LORD.
It shall be done, my lord.

KING.
And see that no man speaks of this abroad; for if the city hear of it before we march,
the merchants will shut up their shops, and we shall want for bread.""",
    """Of all the creatures that the earth brings forth, none is more strange than man; for he alone
looks up, and seeks to know the causes of the things he sees. He measures out the heavens, and counts
the stars, and names them one by one; he digs into the ground for gold, and builds his towers high,
as if to reach the clouds. And yet for all his knowledge he knows not himself, nor what he shall be
on the morrow, nor whither he shall go when he is dead.""",
    """MARIA.
Madam, there is a young man at the gate who will not go away. He says he hath a letter from the count.

LADY.
Tell him I am sick, or gone to church, or anything. I will not see him.

MARIA.
I told him so, madam, and he says he will sit upon the steps until the moon comes up.

LADY.
What kind of man is he?

MARIA.
A pale young man, with a feather in his hat and mud upon his boots. He looks as though he had not slept.

LADY.
Then let him in, and bring him bread and wine. I will hear his letter, and send him home.""",
    """Beyond the mountains lay the garden, walled about with cedar and with palm, and no man living had
set foot therein. A river ran through the midst of it, and parted into four, and watered all the ground,
so that the trees bore fruit in every season. There the lion lay down beside the lamb, and the birds
sang all the day without a care; and in the evening a cool wind came down from the hills, and the
flowers closed their eyes and slept.""",
    """FIRST CITIZEN.
Neighbours, what think you of the news? They say the general is come home in triumph.

SECOND CITIZEN.
I think he hath deserved it. He fought like a lion at the gates, and took the town himself.

FIRST CITIZEN.
Ay, but he is proud, and scorns the poor folk of the town. He will not speak with us in the market place.

SECOND CITIZEN.
Let him be proud, so he be honest. I had rather have a proud man that keeps the city safe
than a humble one that sells it to the enemy.""",
    """The evening came, and with it came the rain. The travellers sought shelter at an inn beside
the road, where a fat host received them with a lantern, and led them to a room above the stable.
There they sat down to supper, and the host brought bread and cheese and a jug of ale, and told them
tales of robbers on the heath, until the youngest of the company would not go to bed without a candle.""",
    """DUKE.
Come hither, Claudio. I must away to Venice for a month, and while I am gone the city shall be thine
to govern. Be just, but not too hard; the law is like a sword, that must be drawn but seldom used.

CLAUDIO.
My lord, I am too young for such a charge. There are older men about the court, and wiser.

DUKE.
Older, perhaps, but not more honest. I have watched thee since thou wert a boy, and never knew thee lie.
Take up the keys, and say no more of it; we ride at dawn.""",
    """Then spake the tempter, and his voice was soft as music heard across the water in the night.
Why dost thou fear, he said, to taste of that which grows so fair? The tree was set within thy reach,
and all its fruit is sweet. And she, who never yet had heard a lie, believed him, and put forth her hand;
and all the stars grew dim, and a cold wind passed over the garden, and the birds were still.""",
    """NURSE.
Madam, your mother calls you to the chamber; the gentleman is come, and waits below.

JULIET.
I come, I come. Tell her I will be there anon.

NURSE.
Make haste, sweet lamb, for she is in a temper, and the supper will be cold.

JULIET.
Go thou before, and say I follow thee.""",
    """When winter comes, the birds forsake the trees, and the old men sit beside the fire and talk of
the wars they fought when they were young. The children gather round to hear them, and the women spin,
and the dog lies sleeping on the hearth. Without, the snow falls soft upon the roofs, and the moon
looks down upon the silent town; and no man stirs abroad until the morning.""",
]


def mc_docs(rng: random.Random):
    docs = []
    for i, (context, right) in enumerate(MC_PAIRS):
        words = right.split()
        scrambled = right
        while scrambled == right:  # same words in another order: a test of word order alone
            scrambled = " ".join(rng.sample(words, len(words)))
        others = [c for j, (_, c) in enumerate(MC_PAIRS) if j != i]
        # two ends of other lines: a test of fit to the context, with lengths that differ (acc vs acc_norm)
        choices = [right, scrambled, *rng.sample(others, 2)]
        order = list(range(4))
        rng.shuffle(order)
        docs.append({"id": i, "context": context, "choices": [choices[k] for k in order],
                     "label": order.index(0)})
    return docs


def cloze_docs():
    return [{"id": i, "text": " ".join(t.split())} for i, t in enumerate(CLOZE)]


def ppl_docs():
    return [{"id": i, "page": t} for i, t in enumerate(PPL)]


def write(name: str, docs) -> None:
    DATA.mkdir(exist_ok=True)
    with open(DATA / f"{name}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)


def main() -> None:
    write("sample_mc", mc_docs(random.Random(1234)))
    write("sample_cloze", cloze_docs())
    write("sample_ppl", ppl_docs())
    print(f"wrote {DATA}/sample_mc.jsonl ({len(MC_PAIRS)}), sample_cloze.jsonl ({len(CLOZE)}), "
          f"sample_ppl.jsonl ({len(PPL)})")


if __name__ == "__main__":
    main()
