"""The phrase table we write: colloquial synonyms that map back to canonical slot values, the
rule-based rewrites built on them, and the templates for added hotel turns.

Everything here is data. Two directions share one table on purpose: the offline rewriter may only
produce a colloquial phrase that the slot extractor maps back to the same canonical value, so a
rule-based rewrite can never change the tool call it implies (``tests/dataprep/corpora/hotel`` checks
every alternative against the extractor).

Canonical facility names are CrossWOZ's ``酒店设施`` values. The synonyms come from how people
phrase them and from the 240 distinct facility strings the fine-tuning-lab data (ChatGPT-rewritten
CrossWOZ) puts in its tool calls, e.g. ``叫我起床``, ``无障碍设施``, ``国际电话机``.

>>> FACILITY_SYNONYMS["国际长途电话"][:2]
['国际长途', '国际电话']
"""

from __future__ import annotations

# -- slot vocabulary --------------------------------------------------------------------------

HOTEL_TYPES: tuple[str, ...] = ("经济型", "舒适型", "高档型", "豪华型")

# Colloquial phrase -> canonical type. "经济" alone is how the lab data says it ("经济的酒店").
TYPE_SYNONYMS: dict[str, list[str]] = {
    "经济型": ["经济型", "经济"],
    "舒适型": ["舒适型", "舒适"],
    "高档型": ["高档型", "高档"],
    "豪华型": ["豪华型", "豪华"],
}

# Generic classes a vague phrase maps to: "有wifi" does not say which of the five wifi variants,
# so it is its own slot value; a rewrite that turns a specific variant into the generic one
# loses information and fails the check (that is intended: the tool call would change).
GENERIC_WIFI = "wifi"
GENERIC_POOL = "游泳池"
GENERIC_PARKING = "停车"

# Canonical facility -> colloquial phrases that mean it. Matching is longest-first on lower-cased
# text, so "免费早餐" (早餐服务免费) wins over "早餐" (早餐服务).
FACILITY_SYNONYMS: dict[str, list[str]] = {
    "公共区域和部分房间提供wifi": [
        "公共区域和部分房间有wifi", "公共区域和一些房间提供wifi", "公共区域和一些房间有wifi",
        "公共区域和部分房间都有wifi", "公共区域和某些房间都有wifi", "公共区域和一部分房间都有wifi",
        "公共区域和部分房间提供无线网络", "公共区域和一些房间提供无线网络",
        "公共区域和部分房间都有无线网络", "公共区域及某些房间提供无线网络",
        "提供wifi的区域包括公共区域和部分房间", "提供wifi的公共区域和部分房间",
        "提供无线上网的公共区域和部分客房", "提供无线上网的公共区域和部分房间",
        "大堂和部分房间能连wifi", "大堂和一些房间能连wifi",
    ],
    "酒店各处提供wifi": [
        "酒店各处都有wifi", "酒店各处有wifi", "各处都有wifi", "酒店各处有无线网", "全酒店覆盖wifi",
        "酒店全区wifi覆盖", "酒店内全部覆盖wifi", "到处都能连wifi", "哪儿都能连wifi", "处处都有wifi",
        "酒店每个角落都有wifi", "酒店各个角落都有wifi", "酒店内所有区域都有wifi",
    ],
    "部分房间提供wifi": ["部分房间有wifi", "部分房间有无线网络", "部分房间提供无线网络",
                        "部分客房设有wifi", "有些房间有wifi"],
    "公共区域提供wifi": ["公共区域有wifi", "公共区域提供无线网络", "公共区域有免费wifi",
                        "大堂有wifi"],
    "所有房间提供wifi": ["所有房间都有wifi", "所有客房都有wifi", "所有客房都有无线网络",
                        "每个房间都有wifi", "房间里都有wifi"],
    GENERIC_WIFI: ["wifi", "无线网", "无线网络", "无线上网", "无线宽带"],
    "宽带上网": ["宽带", "有线上网", "网线上网", "插网线", "宽带网络"],
    "国际长途电话": ["国际长途", "国际电话", "国际通话", "国际长途通话", "国际电话机",
                    "跨国电话", "全球长途电话", "打国外的电话", "国际话费"],
    "免费市内电话": ["市内电话免费", "免费打市内电话", "免费市区电话", "市区免费电话",
                    "免费本地电话", "免费打本地电话", "市内免费电话", "本地电话免费",
                    "市内电话随便打"],
    "免费国内长途电话": ["国内长途免费", "免费打国内长途", "国内长途电话免费", "国内长途随便打"],
    "吹风机": ["电吹风", "吹头发的", "风筒"],
    "24小时热水": ["全天供应热水", "24小时供应热水", "全天热水", "24小时有热水", "全天候供应热水",
                  "全天候热水", "全天都有热水", "全天候提供热水", "24小时提供热水", "随时有热水",
                  "24小时热水供应", "一天到晚都有热水", "热水"],
    "暖气": ["供暖", "取暖设备", "暖气设备", "供暖设备"],
    "西式餐厅": ["西餐厅", "西餐馆", "西餐"],
    "中式餐厅": ["中餐厅", "中餐馆", "中餐", "中国风餐厅"],
    "残疾人设施": ["无障碍设施", "残障设施", "残障人士设施", "无障碍通道", "为残障人士提供的设施",
              "残障人士", "残疾人"],
    "室内游泳池": ["室内泳池", "室内游泳场", "室内游泳馆", "室内的游泳池", "室内游水池", "室内水池",
              "室内游泳设施"],
    "室外游泳池": ["室外泳池", "露天游泳池", "户外泳池", "露天泳池", "户外游泳池"],
    GENERIC_POOL: ["游泳池", "泳池", "能游泳"],
    "会议室": ["开会的地方", "会议场地", "开会房间", "会议场所", "开会的房间", "开会地点", "会议地点"],
    "健身房": ["健身中心", "健身的地方", "能健身"],
    "SPA": ["spa", "水疗", "水疗中心"],
    "无烟房": ["无烟环境", "无烟客房", "无烟房间", "禁烟房", "禁烟房间", "不吸烟房", "无烟的房间",
              "不能抽烟的房间", "不让抽烟的房间", "不可吸烟的房间", "不允许吸烟的房间"],
    "商务中心": ["商务办公中心", "商务服务中心", "商务设施中心"],
    "酒吧": ["酒馆", "喝酒的吧台"],
    "桑拿": ["桑拿房", "蒸桑拿"],
    "早餐服务": ["供应早餐", "提供早餐", "早餐", "早饭", "管早饭", "供应早饭", "早饭供应"],
    "早餐服务免费": ["免费早餐", "早餐免费", "免费提供早餐", "提供免费早餐", "免费供应早餐",
                    "早饭免费", "免费的早餐", "免费早饭", "管免费早饭"],
    "接机服务": ["接机", "机场接送", "去机场接人", "机场接人"],
    "接站服务": ["接站", "火车站接送", "去车站接人", "车站接人"],
    "接待外宾": ["外国客人", "接待外国客人", "接待外国人", "招待外宾", "外宾", "接待国际客人",
                "迎接国外客人", "迎接国际客人", "外国人能住"],
    "洗衣服务": ["洗衣", "衣物清洗", "帮忙洗衣服", "能洗衣服"],
    "行李寄存": ["寄存行李", "行李存放", "存行李", "行李寄放", "放行李", "行李寄存处", "托运行李"],
    "看护小孩服务": ["看孩子", "照看孩子", "照顾孩子", "看小孩", "帮忙带孩子", "亲子托管"],
    "租车": ["租用汽车", "租用车辆", "租辆车"],
    "叫醒服务": ["叫醒", "叫早", "叫早服务", "唤醒服务", "叫起床", "叫我起床", "叫起服务", "叫客服务",
                "早上喊我起床"],
    "收费停车位": ["付费停车位", "停车位收费", "收费停车场", "付费停车场", "停车需要付费",
                  "停车场收费", "收费泊车位", "停车位需付费", "付费停车", "收费停车"],
    GENERIC_PARKING: ["停车位", "停车场", "能停车", "停车"],
    "棋牌室": ["棋牌", "打牌的地方", "打麻将的地方", "麻将房"],
    "温泉": ["泡温泉"],
}

# -- rule-based colloquial rewrites ------------------------------------------------------------
# (regex, alternatives). An alternative is a re.sub template (\1 = first group); "{cn2}" is the
# second group written in Chinese numerals (500 -> 五百), which the slot extractor reads back.
# Rules run in order, each on the output of the previous ones, each at most once per utterance
# position; the rewriter picks one alternative per match with the record's seeded RNG.

# A canonical facility with its verb ("有国际长途电话") becomes a colloquial verb phrase.
FACILITY_VERB_REWRITES: dict[str, list[str]] = {
    "国际长途电话": ["能打国际长途", "可以打国际电话"],
    "免费市内电话": ["市内电话随便打", "能免费打本地电话"],
    "免费国内长途电话": ["国内长途随便打", "能免费打国内长途"],
    "叫醒服务": ["能叫早", "早上能叫醒"],
    "早餐服务": ["管早饭", "有早饭"],
    "早餐服务免费": ["管免费早饭", "有免费早餐"],
    "行李寄存": ["能存行李", "能寄存行李"],
    "无烟房": ["有不让抽烟的房间", "有禁烟房"],
    "24小时热水": ["全天都有热水", "一天到晚都有热水"],
    "宽带上网": ["能插网线上网", "有宽带"],
    "吹风机": ["有电吹风", "有吹头发的"],
    "接机服务": ["能去机场接人", "能接机"],
    "接站服务": ["能去车站接人", "能接站"],
    "洗衣服务": ["能洗衣服", "能帮忙洗衣服"],
    "健身房": ["能健身", "有健身的地方"],
    "会议室": ["有开会的地方", "有开会的房间"],
    "接待外宾": ["外国人能住", "能接待外国人"],
    "看护小孩服务": ["能帮忙带孩子", "能帮忙看孩子"],
    "残疾人设施": ["有无障碍设施", "有无障碍通道"],
    "室内游泳池": ["有室内泳池"],
    "中式餐厅": ["有中餐厅", "能吃中餐"],
    "西式餐厅": ["有西餐厅", "能吃西餐"],
    "收费停车位": ["能付费停车", "有付费停车位"],
    "棋牌室": ["能打麻将的地方", "有打牌的地方"],
    "SPA": ["能做水疗", "有水疗"],
    "酒吧": ["有酒馆"],
    "商务中心": ["有商务办公中心"],
    "暖气": ["有供暖", "有暖气设备"],
}
# Facility verbs the rewriter recognises in front of a canonical name.
FACILITY_VERBS = ("提供", "有", "带", "配有")
# A canonical facility without a verb ("叫醒服务和无烟房") becomes a colloquial noun.
FACILITY_NOUN_REWRITES: dict[str, list[str]] = {
    "国际长途电话": ["国际长途", "国际电话"],
    "叫醒服务": ["叫早服务", "叫醒"],
    "无烟房": ["禁烟房", "无烟房间"],
    "行李寄存": ["行李存放"],
    "24小时热水": ["全天热水"],
    "早餐服务": ["早餐"],
    "早餐服务免费": ["免费早餐"],
    "吹风机": ["电吹风"],
    "中式餐厅": ["中餐厅"],
    "西式餐厅": ["西餐厅"],
    "残疾人设施": ["无障碍设施"],
    "室内游泳池": ["室内泳池"],
    "接机服务": ["接机"],
    "接站服务": ["接站"],
    "收费停车位": ["付费停车位"],
    "免费市内电话": ["免费本地电话"],
    "宽带上网": ["宽带"],
    "看护小孩服务": ["照看孩子"],
}

OPENER_REWRITES: list[tuple[str, list[str]]] = [
    (r"^你好，", ["", "嗨，", "哈喽，", "您好，"]),
    (r"^您好，", ["", "嗨，", "你好呀，"]),
    (r"请帮我", ["麻烦帮我", "帮我", "能不能帮我"]),
    (r"帮我推荐一家", ["给我推荐个", "帮忙推荐一家", "推荐一家"]),
    (r"帮我推荐一个", ["给我推荐个", "帮忙推荐一个"]),
    (r"给我推荐一家吧", ["推荐一家呗", "给推荐一个呗"]),
    (r"帮我找一家", ["帮我找家", "给我找一家", "帮忙找一家"]),
    (r"帮我找一个", ["帮我找个", "给我找一个"]),
    (r"我想找一家", ["我想找家", "想找一家"]),
    (r"我想找一个", ["我想找个", "想找一个"]),
    (r"有什么推荐的吗？", ["有啥推荐的不？", "有啥好推荐的？"]),
    (r"可以帮我推荐一个吗？", ["能给推荐一个不？", "能推荐一个吗？"]),
    (r"，谢谢。$", ["，多谢！", "，谢啦。"]),
    (r"谢谢！", ["多谢！", "谢啦！"]),
    (r"游玩结束后?", ["玩完了", "逛完以后"]),
    (r"酒店住宿", ["酒店住", "酒店住一晚"]),
    (r"这家酒店", ["这家店", "这家"]),
    (r"是多少？", ["是多少啊？", "多少？"]),
]

# Numbers keep their value and their bound (lower/upper/range); only the wording changes.
NUMBER_REWRITES: list[tuple[str, list[str]]] = [
    (r"(\d+)-(\d+)元之间", [r"\1到\2块之间", r"\1到\2块钱之间"]),
    (r"(\d+)-(\d+)元", [r"\1到\2块", r"\1至\2元"]),
    (r"(在|是)?(\d+)元以上", [r"\1\2块以上", r"\1\2块钱往上", r"不低于\2块", r"\1{cn2}块以上"]),
    (r"(在|是)?(\d+)元(?:以下|以内|之内)", [r"\1\2块以内", r"不超过\2块", r"\1{cn2}块以内"]),
    (r"不超过(\d+)元?", [r"别超过\1块", r"最多\1块"]),
    (r"(在|是)?(\d+(?:\.\d+)?)分以上", [r"\1\2分往上", r"不低于\2分", r"至少\2分"]),
    (r"评分是(\d(?:\.\d)?)分", [r"评分\1分", r"打分\1分"]),
    (r"价格在", ["价位在", "价钱在"]),
    (r"最低价格是", ["价位在", "价钱在"]),
]

TYPE_REWRITES: list[tuple[str, list[str]]] = [
    (r"经济型酒店", ["经济实惠的酒店", "经济型的酒店"]),
    (r"舒适型酒店", ["住着舒适的酒店", "舒适型的店"]),
    (r"高档型酒店", ["高档点的酒店", "高档的酒店"]),
    (r"豪华型酒店", ["豪华点的酒店", "豪华的酒店"]),
]

# -- templates for added hotel turns ------------------------------------------------------------
# {name} is the hotel; the other fields come from its database record. "{ref}" is how the user
# refers to it: "这家酒店" when one hotel was recommended, its name when several were.

FOLLOWUP_QUESTIONS: dict[str, list[str]] = {
    "price": ["{ref}的价格是多少？", "{ref}一晚多少钱？", "{ref}住一晚要多少钱啊？"],
    "phone": ["{ref}的电话是多少？", "能告诉我{ref}的联系电话吗？", "{ref}电话多少？"],
    "address": ["{ref}的地址在哪里？", "{ref}在哪儿？", "{ref}具体在什么位置？"],
    "subway": ["{ref}附近有地铁站吗？", "去{ref}坐地铁在哪站下？", "{ref}离哪个地铁站近？"],
    "rating": ["{ref}的评分是多少？", "{ref}评分怎么样？", "{ref}口碑如何，评分多少？"],
    "facilities": ["{ref}有{facility}吗？", "{ref}提供{facility}吗？", "请问{ref}有没有{facility}？"],
}
FOLLOWUP_ANSWERS: dict[str, list[str]] = {
    "price": ["{name}的价格是{price}元。", "{name}每晚{price}元。"],
    "phone": ["{name}的电话是{phone}。", "您可以拨打{phone}联系{name}。"],
    "address": ["{name}的地址是{address}。", "{name}位于{address}。"],
    "subway": ["{name}附近的地铁站是{subway}。", "您可以在{subway}下车，离{name}很近。"],
    "rating": ["{name}的评分是{rating}分。", "{name}评分{rating}分。"],
    "facilities_yes": ["{name}提供{facility}。", "有的，{name}提供{facility}。"],
    "facilities_no": ["抱歉，{name}不提供{facility}。", "{name}没有{facility}。"],
}

CLOSING_USER: list[str] = ["好的，我决定入住{name}了。", "那就{name}吧，我决定住这家了。",
                           "好的，就订{name}了，谢谢！", "行，我就住{name}了。"]
CLOSING_ASSISTANT: list[str] = ["好的，祝您入住愉快！", "好的，祝您入住愉快，旅途顺利！",
                                "不客气，祝您入住愉快！"]

NAME_QUERY_USER: list[str] = ["请问有没有叫{name}的酒店？", "帮我查一下{name}。",
                              "我想订{name}，帮我查查。", "{name}怎么样？帮我看看。"]
NAME_QUERY_REPLY: list[str] = [
    "为您找到{name}。",
    "为您找到{name}，它是一家{type}酒店，地址在{address}。",
    "为您找到{name}，价格是{price}元，评分{rating}分。",
]
NAME_QUERY_REPLY_NO_PRICE: list[str] = ["为您找到{name}。",
                                        "为您找到{name}，它是一家{type}酒店，地址在{address}。"]

PRICE_UPPER_USER: list[str] = ["帮我找个价格不超过{upper}元的{type}酒店。",
                               "我要找一个价格在{upper}元以内的{type}酒店",
                               "有没有{upper}块以下的{type}酒店？",
                               "我想找一个比{upper}元便宜的{type}酒店"]
PRICE_UPPER_REPLY: dict[int, list[str]] = {
    1: ["为您推荐{h1}，价格是{p1}元。", "推荐您去{h1}。"],
    2: ["为您推荐{h1}和{h2}。", "推荐您去{h1}，价格是{p1}元；或者{h2}，价格是{p2}元。"],
}

HOTEL_THOUGHT = "我需要使用search_hotels工具来查询酒店"

# -- doc-QA --------------------------------------------------------------------------------------

REFUSAL_ANSWER = "根据提供的文档无法回答该问题。"
